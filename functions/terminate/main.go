// Command terminate is the Lambda function that hands a leaving broker's slot back.
// It only wires configuration, clients and the handler; the logic lives in
// shared/terminate.
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/secrets"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
)

func main() {
	cfg, awsCfg, log := app.Init("terminate")
	ec2c, ddb := ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg)
	h := terminate.New(cfg, ec2c, autoscaling.NewFromConfig(awsCfg), ddb, ssm.NewFromConfig(awsCfg), log, os.Stdout)
	h.Drainers = []terminate.Drainer{dns.New(cfg, route53.NewFromConfig(awsCfg), ec2c, ddb, log)}
	h.Alerts = &alert.Notifier{SNS: sns.NewFromConfig(awsCfg), TopicARN: cfg.AlertTopicARN, Cluster: cfg.Cluster}
	if len(cfg.Kafka.Bootstrap) > 0 {
		kcfg, err := secrets.Kafka(context.Background(), secretsmanager.NewFromConfig(awsCfg), cfg.Kafka) // once per cold start
		if err != nil {
			app.Fail("terminate", err)
		}
		k, err := kafka.NewClient(kcfg)
		if err != nil {
			app.Fail("terminate", err)
		}
		h.Kafka = k
	}
	lambda.Start(h)
}
