// Command grow is the Lambda function that grows a slot's data volume when the slot's
// disk alarm fires (invoked by the alarm action, or by an EventBridge rule for alarm
// state changes). It only wires configuration, clients and the handler; the logic
// lives in shared/grow.
package main

import (
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/grow"
)

func main() {
	cfg, awsCfg, log := app.Init("grow")
	h := grow.New(cfg, ec2.NewFromConfig(awsCfg), dynamodb.NewFromConfig(awsCfg), ssm.NewFromConfig(awsCfg),
		sns.NewFromConfig(awsCfg), awsapi.NewCloudWatch(awsCfg), log, os.Stdout)
	lambda.Start(h)
}
