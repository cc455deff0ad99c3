package test

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// Must show 6 (with cfn-lint, which make test runs, and the IAM tests): the SASL
// password never reaches a function's environment. The template takes no password at
// all, only the ARN of its secret; only terminate and reconcile (the functions that
// talk to Kafka) may read that secret, that one only; no parameter whose value is
// hidden (NoEcho) flows into any environment.
func TestTemplateKafkaPasswordOnlyInSecretsManager(t *testing.T) {
	for _, sc := range deployScenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := deployStack(t, sc.name)
			defs := cfnObj(s.tmpl["Parameters"])
			if _, ok := defs["KafkaPassword"]; ok {
				t.Fatalf("the template takes a KafkaPassword parameter")
			}
			var hidden []string
			for name, d := range defs {
				if v, _ := cfnObj(d)["NoEcho"].(bool); v {
					hidden = append(hidden, name)
				}
			}
			for _, id := range existingFunctions(s) {
				env := s.env(t, id)
				if v, ok := env["SLOTKEEPER_KAFKA_PASSWORD"]; ok {
					t.Errorf("%s has SLOTKEEPER_KAFKA_PASSWORD=%q in its environment", id, v)
				}
				for _, name := range hidden {
					val := cfnStr(s.params[name])
					for k, v := range env {
						if val != "" && strings.Contains(v, val) {
							t.Errorf("%s's %s carries the hidden parameter %s", id, k, name)
						}
					}
				}
				if arn := cfnStr(s.params["KafkaPasswordSecretArn"]); arn != "" {
					if cfg := loadFunctionConfig(t, s, id); cfg.Kafka.PasswordSecretARN != arn || cfg.Kafka.Password != "" {
						t.Errorf("%s: Kafka config %+v, want the secret's ARN and no password", id, cfg.Kafka)
					}
				}
			}

			// Who may read which secret.
			statements := policyStatements(s)
			readers := map[string][]string{}
			for _, id := range existingFunctions(s) {
				role := roleOf(t, s, id)
				policies := []string{role}
				for _, a := range cfnList(s.props(s.resource(t, role))["ManagedPolicyArns"]) {
					policies = append(policies, strings.TrimPrefix(cfnStr(a), "arn:aws:iam::"+tmplAccount+":policy/"))
				}
				for _, p := range policies {
					for _, st := range statements[p] {
						if st.effect == "Allow" && slices.Contains(st.actions, "secretsmanager:GetSecretValue") {
							readers[id] = append(readers[id], st.resources...)
						}
					}
				}
			}
			arn := cfnStr(s.params["KafkaPasswordSecretArn"])
			want := map[string][]string{}
			if arn != "" {
				want = map[string][]string{"TerminateFunction": {arn}, "ReconcileFunction": {arn}}
			}
			if !maps.EqualFunc(readers, want, slices.Equal) {
				t.Errorf("secretsmanager:GetSecretValue granted %v, want %v", readers, want)
			}
			t.Logf("secret readers %v; hidden parameters %v", readers, hidden)
		})
	}
}

// Must show 6: the alert topic and the dead-letter queue are encrypted with KMS: by
// default with a customer managed key the stack creates (rotated; its policy lets
// CloudWatch alarms and EventBridge use it, which the AWS managed keys cannot), or with
// the operator's key (NotificationKmsKeyArn), and then the stack creates none.
func TestTemplateNotificationsUseKMS(t *testing.T) {
	for _, sc := range deployScenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := deployStack(t, sc.name)
			own := cfnStr(s.params["NotificationKmsKeyArn"])
			want := any("NotificationKey")
			if own != "" {
				want = own
			}
			for _, id := range []string{"AlertTopic", "DeadLetterQueue"} {
				p := s.props(s.resource(t, id))
				if got := p["KmsMasterKeyId"]; got != want {
					t.Errorf("%s is encrypted with %v, want %v", id, got, want)
				}
				if _, ok := p["SqsManagedSseEnabled"]; ok {
					t.Errorf("%s also asks for SQS-managed encryption", id)
				}
			}
			keys := s.resources("AWS::KMS::Key")
			if own != "" {
				if len(keys) != 0 {
					t.Errorf("with the operator's key the stack still creates %v", slices.Collect(maps.Keys(keys)))
				}
				return
			}
			key := s.resource(t, "NotificationKey")
			p := s.props(key)
			if p["EnableKeyRotation"] != true {
				t.Errorf("the notification key is not rotated")
			}
			services := map[string][]string{}
			for _, st := range statementsOf("NotificationKey", p["KeyPolicy"]) {
				if svc := cfnStr(cfnObj(st.raw["Principal"])["Service"]); svc != "" && st.effect == "Allow" {
					services[svc] = st.actions
				}
			}
			for _, svc := range []string{"cloudwatch.amazonaws.com", "events.amazonaws.com"} {
				if a := services[svc]; !slices.Contains(a, "kms:GenerateDataKey*") || !slices.Contains(a, "kms:Decrypt") {
					t.Errorf("the key policy lets %s do %v, want kms:GenerateDataKey* and kms:Decrypt", svc, a)
				}
			}
		})
	}
}
