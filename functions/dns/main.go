// Command dns is the Lambda function that keeps a cluster's Route 53 records in step
// with EC2 instance state changes. It only wires configuration, clients and the
// handler; the logic lives in shared/dns.
package main

import (
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"

	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/dns"
)

func main() {
	cfg, awsCfg, log := app.Init("dns")
	s := dns.New(cfg, route53.NewFromConfig(awsCfg), ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), log)
	lambda.Start(dns.NewHandler(cfg, s, log, os.Stdout))
}
