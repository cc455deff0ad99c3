package awsapi

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// SecretsManager is the part of the Secrets Manager API slotkeeper uses (the Kafka SASL
// password, read once per cold start).
type SecretsManager interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

var _ SecretsManager = (*secretsmanager.Client)(nil)
