package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/secrets"
)

// configFlag is the flag of one configuration variable.
type configFlag struct {
	flag string
	v    config.Var
}

// configFlags returns one flag per configuration variable: SLOTKEEPER_ASG_NAME is
// --asg-name. They come from config.Vars, so they can never drift from what the
// functions read.
func configFlags() []configFlag {
	out := make([]configFlag, 0, len(config.Vars))
	for _, v := range config.Vars {
		out = append(out, configFlag{flag: strings.ReplaceAll(strings.ToLower(v.Name), "_", "-"), v: v})
	}
	return out
}

// registerConfigFlags registers the configuration flags on fs and returns their values
// by variable name (without the prefix).
func registerConfigFlags(fs *flag.FlagSet) map[string]*string {
	vals := map[string]*string{}
	for _, f := range configFlags() {
		vals[f.v.Name] = fs.String(f.flag, "", "SLOTKEEPER_"+f.v.Name+": "+f.v.Meaning)
	}
	return vals
}

// placeholders stand in for variables that config.Load requires but the command does
// not read, so that, say, `history` works with only the cluster and the table set.
// They are never used: a command reads only what it Needs, or checks Env.Set.
var placeholders = map[string]string{
	"CLUSTER": "unset", "ASG_NAME": "unset", "TABLE": "unset", "SLOT_COUNT": "1",
	"SUBNETS": "subnet-0", "SECURITY_GROUPS": "sg-0",
}

// Env is a command's configuration and its clients.
type Env struct {
	// Config is the validated slotkeeper configuration.
	Config config.Config
	// Set reports which variables were given (by flag or environment); the others
	// hold defaults or placeholders.
	Set map[string]bool

	g       *globals
	clients *Clients
}

// Clients returns the AWS and Kafka clients, building them on first use, so that a
// bad argument is reported before any AWS configuration is needed.
func (e *Env) Clients(ctx context.Context) (*Clients, error) {
	if e.clients != nil {
		return e.clients, nil
	}
	awsCfg, err := loadAWS(ctx, e.g)
	if err != nil {
		return nil, err
	}
	e.clients = NewClients(awsCfg)
	e.clients.KafkaConfig = e.Config.Kafka
	return e.clients, nil
}

// Close releases the Kafka client, if one was made.
func (e *Env) Close() {
	if e.clients != nil {
		e.clients.Close()
	}
}

// EC2 is the part of the EC2 API slotctl uses: what the functions use, and what
// adopt and roll need besides.
type EC2 interface {
	awsapi.EC2
	ModifyInstanceAttribute(ctx context.Context, in *ec2.ModifyInstanceAttributeInput, opts ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
	ModifyNetworkInterfaceAttribute(ctx context.Context, in *ec2.ModifyNetworkInterfaceAttributeInput, opts ...func(*ec2.Options)) (*ec2.ModifyNetworkInterfaceAttributeOutput, error)
	DescribeLaunchTemplates(ctx context.Context, in *ec2.DescribeLaunchTemplatesInput, opts ...func(*ec2.Options)) (*ec2.DescribeLaunchTemplatesOutput, error)
}

// AutoScaling is the part of the Auto Scaling API slotctl uses: what the functions
// use, and the group's instance refreshes (preflight).
type AutoScaling interface {
	awsapi.AutoScaling
	DescribeInstanceRefreshes(ctx context.Context, in *autoscaling.DescribeInstanceRefreshesInput, opts ...func(*autoscaling.Options)) (*autoscaling.DescribeInstanceRefreshesOutput, error)
}

// Clients are the AWS clients slotctl uses, through narrow interfaces, and the Kafka
// client, made on first use.
type Clients struct {
	EC2         EC2
	AutoScaling AutoScaling
	DynamoDB    awsapi.DynamoDB
	Route53     awsapi.Route53
	STS         awsapi.STS
	// CloudWatch holds the slots' disk alarms (adopt points one at its holder).
	CloudWatch awsapi.CloudWatch

	// KafkaConfig is how Kafka is reached; its Bootstrap empty: no Kafka checks.
	KafkaConfig config.KafkaConfig
	// Secrets reads the SASL password when SLOTKEEPER_KAFKA_PASSWORD_SECRET_ARN names it.
	Secrets awsapi.SecretsManager
	kafka   *kafka.Client
}

// NewClients returns clients built from an AWS configuration.
func NewClients(cfg aws.Config) *Clients {
	return &Clients{
		EC2:         ec2.NewFromConfig(cfg),
		AutoScaling: autoscaling.NewFromConfig(cfg),
		DynamoDB:    dynamodb.NewFromConfig(cfg),
		Route53:     route53.NewFromConfig(cfg),
		Secrets:     secretsmanager.NewFromConfig(cfg),
		STS:         sts.NewFromConfig(cfg),
		CloudWatch:  awsapi.NewCloudWatch(cfg),
	}
}

// Close releases the Kafka client, if one was made.
func (c *Clients) Close() {
	if c.kafka != nil {
		c.kafka.Close()
		c.kafka = nil
	}
}

// Kafka returns the Kafka client, or nil when no bootstrap brokers are configured.
func (c *Clients) Kafka() (*kafka.Client, error) {
	if len(c.KafkaConfig.Bootstrap) == 0 {
		return nil, nil
	}
	if c.kafka == nil {
		kcfg := c.KafkaConfig
		if kcfg.PasswordSecretARN != "" && c.Secrets != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var err error
			if kcfg, err = secrets.Kafka(ctx, c.Secrets, kcfg); err != nil {
				return nil, awsError(err, "reading the Kafka SASL password")
			}
		}
		k, err := kafka.NewClient(kcfg)
		if err != nil {
			return nil, &Error{Code: ExitUsage, Err: err, Hint: "check SLOTKEEPER_KAFKA_* (--kafka-bootstrap, --kafka-sasl-mechanism, ...)"}
		}
		c.kafka = k
	}
	return c.kafka, nil
}

// loadEnv reads the configuration (flags over environment), checks that the command's
// needs are met and builds the clients.
func loadEnv(pio IO, g *globals, needs []string) (*Env, error) {
	set := map[string]bool{}
	values := map[string]string{}
	for _, v := range config.Vars {
		val := strings.TrimSpace(pio.Getenv(config.Prefix + v.Name))
		if f := g.config[v.Name]; f != nil && *f != "" {
			val = *f
		}
		if val != "" {
			values[v.Name], set[v.Name] = val, true
		}
	}
	var missing []string
	for _, n := range needs {
		if !set[n] {
			missing = append(missing, fmt.Sprintf("SLOTKEEPER_%s (--%s)", n, strings.ReplaceAll(strings.ToLower(n), "_", "-")))
		}
	}
	if len(missing) > 0 {
		return nil, Usage("slotctl reads the functions' own SLOTKEEPER_* variables: export them as deployed (the Lambda "+
			"functions' environment) or pass the flags; 'slotctl help config' lists them",
			"missing configuration: %s", strings.Join(missing, ", "))
	}
	for k, v := range placeholders {
		if !set[k] {
			values[k] = v
		}
	}
	cfg, err := config.Load(func(k string) string { return values[strings.TrimPrefix(k, config.Prefix)] })
	if err != nil {
		return nil, Usage("fix the variables (or flags) named above; 'slotctl help config' explains each", "%v", err)
	}
	env := &Env{Config: cfg, Set: set, g: g}
	if pio.Clients != nil {
		c := *pio.Clients
		c.KafkaConfig = cfg.Kafka
		env.clients = &c
	}
	return env, nil
}

// loadAWS loads the AWS configuration from the default chain, with --region and
// --endpoint-url applied and a retryer for a person waiting at a terminal: a few
// quick retries, not the functions' patient ones.
func loadAWS(ctx context.Context, g *globals) (aws.Config, error) {
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 3
				o.MaxBackoff = 2 * time.Second
			})
		}),
	}
	if g.region != "" {
		opts = append(opts, awsconfig.WithRegion(g.region))
	}
	if g.endpoint != "" {
		opts = append(opts, awsconfig.WithBaseEndpoint(g.endpoint))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, &Error{Code: ExitUsage, Err: fmt.Errorf("loading the AWS configuration: %w", err),
			Hint: "check AWS_PROFILE and the shared config files (~/.aws/config)"}
	}
	if cfg.Region == "" {
		return aws.Config{}, &Error{Code: ExitUsage, Err: errors.New("no AWS region configured"),
			Hint: "set AWS_REGION, or pass --region"}
	}
	return cfg, nil
}
