// Package secrets reads the secrets slotkeeper needs from AWS Secrets Manager, once per
// cold start, so that no function carries a password in its environment.
package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
	"github.com/slotkeeper/slotkeeper/shared/config"
)

// ErrEmpty means the secret holds no password.
var ErrEmpty = errors.New("the secret holds no password")

// Kafka returns k with its SASL password read from the secret
// SLOTKEEPER_KAFKA_PASSWORD_SECRET_ARN names, or k unchanged (and no call) when it names
// none. The secret's value is the password itself, or a JSON object whose "password"
// member is (the shape Secrets Manager's console and rotation functions use).
func Kafka(ctx context.Context, api awsapi.SecretsManager, k config.KafkaConfig) (config.KafkaConfig, error) {
	if k.PasswordSecretARN == "" {
		return k, nil
	}
	out, err := api.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(k.PasswordSecretARN)})
	if err != nil {
		return k, fmt.Errorf("reading the Kafka SASL password from secret %s: %w", k.PasswordSecretARN, err)
	}
	password, err := passwordOf(aws.ToString(out.SecretString))
	if err != nil {
		return k, fmt.Errorf("the Kafka SASL password secret %s: %w", k.PasswordSecretARN, err)
	}
	k.Password = password
	return k, nil
}

// passwordOf returns the password a secret's string holds.
func passwordOf(s string) (string, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		var v struct {
			Password *string `json:"password"`
		}
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return "", fmt.Errorf("a JSON secret that is not an object with a \"password\" member: %w", err)
		}
		if v.Password == nil || *v.Password == "" {
			return "", fmt.Errorf("%w: a JSON object without a \"password\" member", ErrEmpty)
		}
		return *v.Password, nil
	}
	if s == "" {
		return "", ErrEmpty
	}
	return s, nil
}
