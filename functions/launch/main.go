// Command launch is the Lambda function that turns a newly launched instance into a
// slot's broker. It only wires configuration, clients and the handler; the logic lives
// in shared/launch.
package main

import (
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/launch"
)

func main() {
	cfg, awsCfg, log := app.Init("launch")
	ec2c, ddb := ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg)
	h := launch.New(cfg, ec2c, autoscaling.NewFromConfig(awsCfg), ddb, log, os.Stdout)
	h.Alerts = &alert.Notifier{SNS: sns.NewFromConfig(awsCfg), TopicARN: cfg.AlertTopicARN, Cluster: cfg.Cluster}
	h.Followers = []launch.Follower{
		grow.NewAlarms(cfg, awsapi.NewCloudWatch(awsCfg), log),      // no-op without SLOTKEEPER_GROW_FUNCTION_ARN
		dns.New(cfg, route53.NewFromConfig(awsCfg), ec2c, ddb, log), // no-op when DNS is not managed
	}
	lambda.Start(h)
}
