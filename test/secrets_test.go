package test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/secrets"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// The Kafka SASL password comes from Secrets Manager: one GetSecretValue of the
// configured ARN at cold start (through the harness proxy, against moto), the secret
// being the password itself or a JSON object with a "password" member. Without a
// secret ARN nothing is read.
func TestKafkaPasswordFromSecretsManager(t *testing.T) {
	h := harness.Start(t)
	direct := secretsmanager.NewFromConfig(h.DirectConfig())
	create := func(name, value string) string {
		out, err := direct.CreateSecret(context.Background(), &secretsmanager.CreateSecretInput{Name: aws.String(name), SecretString: aws.String(value)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.ARN)
	}
	plain := create("kafka-plain", "s3cr3t-plain")
	structured := create("kafka-json", `{"username":"slotkeeper","password":"s3cr3t-json"}`)
	noPassword := create("kafka-json-empty", `{"username":"slotkeeper"}`)
	api := secretsmanager.NewFromConfig(h.AWSConfig())
	base := config.KafkaConfig{Bootstrap: []string{"b-1:9096"}, SASLMechanism: "SCRAM-SHA-512", Username: "slotkeeper"}

	for _, tt := range []struct {
		name, arn, want, wantErr string
	}{
		{"the password itself", plain, "s3cr3t-plain", ""},
		{"a JSON object", structured, "s3cr3t-json", ""},
		{"a JSON object without a password", noPassword, "", "holds no password"},
		{"a secret that does not exist", "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf", "", "ResourceNotFoundException"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := base
			k.PasswordSecretARN = tt.arn
			h.ResetCounts()
			got, err := secrets.Kafka(context.Background(), api, k)
			if n := h.Calls("GetSecretValue"); n < 1 {
				t.Errorf("%d GetSecretValue calls", n)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.arn) {
					t.Fatalf("error %v, want one naming %q and the secret", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Password != tt.want || got.Username != "slotkeeper" || got.SASLMechanism != "SCRAM-SHA-512" {
				t.Fatalf("Kafka config %+v, %v; want password %q", got, err, tt.want)
			}
			if n := h.Calls("GetSecretValue"); n != 1 {
				t.Errorf("%d GetSecretValue calls, want 1", n)
			}
		})
	}
	h.ResetCounts()
	if got, err := secrets.Kafka(context.Background(), api, config.KafkaConfig{Password: "local"}); err != nil || got.Password != "local" || sum(h.CallCounts()) != 0 {
		t.Errorf("without a secret ARN: %+v, %v, %v calls; want the configured password and no call", got, err, h.CallCounts())
	}
	if !errors.Is(func() error {
		k := base
		k.PasswordSecretARN = noPassword
		_, err := secrets.Kafka(context.Background(), api, k)
		return err
	}(), secrets.ErrEmpty) {
		t.Errorf("an empty secret is not ErrEmpty")
	}
}

// The functions read the password when a Kafka connection needs it, not at cold start:
// a secret that cannot be read makes Kafka unreachable (the checks say "not safe",
// with the reason) instead of keeping the function from starting, and once the secret
// can be read the next connection authenticates. A password read is kept for the
// TTL, then read again, so a rotation is followed.
func TestKafkaPasswordReadWhenNeeded(t *testing.T) {
	h := harness.Start(t)
	direct := secretsmanager.NewFromConfig(h.DirectConfig())
	api := secretsmanager.NewFromConfig(h.AWSConfig())
	fake, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "slotkeeper", "p1"))
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	const name = "kafka-later"
	k := config.KafkaConfig{Bootstrap: fake.ListenAddrs(), SASLMechanism: "SCRAM-SHA-256", Username: "slotkeeper",
		PasswordSecretARN: "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + name}

	h.ResetCounts()
	cl, err := kafka.NewClientWithPassword(k, secrets.Password(api, k, 0))
	if err != nil {
		t.Fatalf("a client whose secret does not exist yet: %v, want one that fails only its connections", err)
	}
	defer cl.Close()
	if n := h.Calls("GetSecretValue"); n != 0 {
		t.Errorf("%d GetSecretValue calls before any connection, want 0", n)
	}
	ctx := context.Background()
	if _, err := cl.Partitions(ctx); err == nil || !strings.Contains(err.Error(), "ResourceNotFoundException") {
		t.Fatalf("Partitions without the secret: %v, want an error naming the missing secret", err)
	}
	created, err := direct.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String(name), SecretString: aws.String("p1")})
	if err != nil {
		t.Fatal(err)
	}
	k.PasswordSecretARN = aws.ToString(created.ARN)
	cl2, err := kafka.NewClientWithPassword(k, secrets.Password(api, k, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	if _, err := cl2.Partitions(ctx); err != nil {
		t.Fatalf("Partitions once the secret exists: %v", err)
	}

	// Kept for the TTL, read again after it: a rotation is followed. (Counted at the
	// API this function uses: the clients above may still connect, and read, meanwhile.)
	counted := &countingSecrets{SecretsManager: api}
	pw := secrets.Password(counted, k, 200*time.Millisecond)
	for range 3 {
		if p, err := pw(ctx); err != nil || p != "p1" {
			t.Fatalf("password %q, %v; want p1", p, err)
		}
	}
	if n := counted.calls.Load(); n != 1 {
		t.Errorf("%d GetSecretValue calls for 3 reads within the TTL, want 1", n)
	}
	if _, err := direct.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: created.ARN, SecretString: aws.String("p2")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	if p, err := pw(ctx); err != nil || p != "p2" {
		t.Fatalf("after the rotation and the TTL: %q, %v; want p2", p, err)
	}
}

// countingSecrets counts the GetSecretValue calls made through it.
type countingSecrets struct {
	awsapi.SecretsManager
	calls atomic.Int32
}

func (c *countingSecrets) GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	c.calls.Add(1)
	return c.SecretsManager.GetSecretValue(ctx, in, opts...)
}
