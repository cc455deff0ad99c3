package test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/slotkeeper/slotkeeper/shared/config"
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
