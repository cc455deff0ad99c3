// Package secrets reads the secrets slotkeeper needs from AWS Secrets Manager, when they
// are needed, so that no function carries a password in its environment.
package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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

// PasswordTTL is how long the functions keep a password they read before reading it
// again, so a rotated secret is followed within that time.
const PasswordTTL = time.Minute

// Password returns a function that reads the Kafka SASL password from the secret k
// names, keeps it for ttl, and reads it again after that (or after a failed read). It makes no call until asked: a function that starts while Secrets Manager
// cannot be read still runs, and only its Kafka connections fail, with the reason.
// Without a secret it returns k.Password.
func Password(api awsapi.SecretsManager, k config.KafkaConfig, ttl time.Duration) func(context.Context) (string, error) {
	if k.PasswordSecretARN == "" {
		return func(context.Context) (string, error) { return k.Password, nil }
	}
	var (
		mu       sync.Mutex
		password string
		read     time.Time
	)
	return func(ctx context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if !read.IsZero() && time.Since(read) < ttl {
			return password, nil
		}
		kk, err := Kafka(ctx, api, k)
		if err != nil {
			return "", err
		}
		password, read = kk.Password, time.Now()
		return password, nil
	}
}
