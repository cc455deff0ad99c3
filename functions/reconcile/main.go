// Command reconcile is the Lambda function that repairs drift on a schedule and when
// an instance terminates. It only wires configuration, clients and the handler; the
// logic lives in shared/reconcile.
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

	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/dns"
	"github.com/slotkeeper/slotkeeper/shared/grow"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/reconcile"
	"github.com/slotkeeper/slotkeeper/shared/secrets"
)

func main() {
	cfg, awsCfg, log := app.Init("reconcile")
	ec2c, ddb := ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg)
	h := reconcile.New(cfg, ec2c, autoscaling.NewFromConfig(awsCfg), ddb, log, os.Stdout)
	cw := awsapi.NewCloudWatch(awsCfg)
	h.Repairers = []reconcile.Repairer{
		grow.New(cfg, ec2c, ddb, ssm.NewFromConfig(awsCfg), sns.NewFromConfig(awsCfg), cw, log, os.Stdout), // pending growths, disks still full
		grow.NewAlarms(cfg, cw, log),                                // disk alarms on holders
		dns.New(cfg, route53.NewFromConfig(awsCfg), ec2c, ddb, log), // records
	}
	if len(cfg.Kafka.Bootstrap) > 0 {
		kcfg, err := secrets.Kafka(context.Background(), secretsmanager.NewFromConfig(awsCfg), cfg.Kafka) // once per cold start
		if err != nil {
			app.Fail("reconcile", err)
		}
		k, err := kafka.NewClient(kcfg)
		if err != nil {
			app.Fail("reconcile", err)
		}
		h.Kafka = k
	}
	lambda.Start(h)
}
