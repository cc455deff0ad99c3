package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[strings.TrimPrefix(k, Prefix)] }
}

func valid() map[string]string {
	return map[string]string{
		"CLUSTER": "kafka-prod", "ASG_NAME": "kafka-prod", "TABLE": "slotkeeper-leases", "SLOT_COUNT": "6",
		"SUBNETS": "subnet-0a, subnet-0b,subnet-0c", "SECURITY_GROUPS": "sg-01",
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(valid()))
	if err != nil {
		t.Fatal(err)
	}
	if c.SlotCount != 6 || len(c.Subnets) != 3 || c.Subnets[1] != "subnet-0b" {
		t.Errorf("slots/subnets: %+v", c)
	}
	if !c.ENI || c.Volume.SizeGiB != 100 || c.Volume.Type != "gp3" || !c.Volume.Encrypted || c.Volume.Device != "/dev/sdf" {
		t.Errorf("defaults: %+v", c)
	}
	if c.HeartbeatInterval != time.Minute || c.AttachTimeout != 4*time.Minute || c.MetricsNamespace != "Slotkeeper" {
		t.Errorf("durations/namespace: %+v", c)
	}
	if got := c.SubnetOf(4); got != "subnet-0b" {
		t.Errorf("SubnetOf(4) = %s, want subnet-0b", got)
	}
	if c.Grow.ThresholdPercent != 80 || c.Grow.TargetPercent != 60 || c.Grow.MaxSizeGiB != 16384 || c.Grow.DataMount != "/var/lib/kafka" {
		t.Errorf("grow defaults: %+v", c.Grow)
	}
	if c.DNS.Enabled() || c.DNS.TTL != 60 || len(c.Kafka.Bootstrap) != 0 || c.SafetyMaxWait != 5*time.Minute || c.StopCommand != "systemctl stop kafka" {
		t.Errorf("dns/kafka/safety defaults: %+v %+v %s %q", c.DNS, c.Kafka, c.SafetyMaxWait, c.StopCommand)
	}
	if c.LaunchHook != "slotkeeper-launch" || c.TerminateHook != "slotkeeper-terminate" || c.KafkaUnit != "kafka" ||
		c.UnplannedSafetyMaxWait != 2*time.Minute || c.ForceDetachAfter != 5*time.Minute || c.HandoverMaxWait != 7*time.Minute {
		t.Errorf("removal and handover defaults: hooks %q/%q, unit %q, unplanned %s, force after %s, handover %s",
			c.LaunchHook, c.TerminateHook, c.KafkaUnit, c.UnplannedSafetyMaxWait, c.ForceDetachAfter, c.HandoverMaxWait)
	}
	if got := c.NodeID(4); got != 4 {
		t.Errorf("NodeID(4) = %d", got)
	}
}

func TestLoadReportsEveryProblemAtOnce(t *testing.T) {
	_, err := Load(env(map[string]string{
		"SLOT_COUNT": "zero", "SUBNETS": "subnet-0a,vpc-1", "VOLUME_TYPE": "gp9", "HEARTBEAT_INTERVAL": "soon",
	}))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{
		"SLOTKEEPER_CLUSTER: required", "SLOTKEEPER_ASG_NAME: required", "SLOTKEEPER_TABLE: required",
		`SLOTKEEPER_SLOT_COUNT: "zero" is not an integer`, `"vpc-1" is not a subnet id`,
		"SLOTKEEPER_SECURITY_GROUPS: required", `SLOTKEEPER_VOLUME_TYPE: "gp9"`, `SLOTKEEPER_HEARTBEAT_INTERVAL: "soon"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestLoadRules(t *testing.T) {
	tests := []struct {
		name    string
		set     map[string]string
		wantErr string // "" = valid
	}{
		{"instance mode needs no security groups", map[string]string{"ENI": "false", "SECURITY_GROUPS": ""}, ""},
		{"ENI mode needs security groups", map[string]string{"SECURITY_GROUPS": ""}, "SECURITY_GROUPS: required"},
		{"cluster charset", map[string]string{"CLUSTER": "kafka_prod"}, "CLUSTER"},
		{"slot count bound", map[string]string{"SLOT_COUNT": "0"}, "outside [1, 1000]"},
		{"iops on gp2", map[string]string{"VOLUME_TYPE": "gp2", "VOLUME_IOPS": "3000"}, "VOLUME_IOPS"},
		{"io2 needs iops", map[string]string{"VOLUME_TYPE": "io2"}, "required for volume type io2"},
		{"io2 with iops", map[string]string{"VOLUME_TYPE": "io2", "VOLUME_IOPS": "4000"}, ""},
		{"throughput only gp3", map[string]string{"VOLUME_TYPE": "io1", "VOLUME_IOPS": "100", "VOLUME_THROUGHPUT": "250"}, "VOLUME_THROUGHPUT"},
		{"gp3 throughput", map[string]string{"VOLUME_THROUGHPUT": "250", "VOLUME_IOPS": "6000"}, ""},
		{"kms without encryption", map[string]string{"VOLUME_ENCRYPTED": "false", "VOLUME_KMS_KEY_ID": "alias/x"}, "VOLUME_KMS_KEY_ID"},
		{"device name", map[string]string{"VOLUME_DEVICE": "/dev/nvme1n1"}, "VOLUME_DEVICE"},
		{"heartbeat below attach timeout", map[string]string{"HEARTBEAT_INTERVAL": "5m", "ATTACH_TIMEOUT": "2m"}, "shorter than"},
		{"bad bool", map[string]string{"ENI": "yes please"}, "not a boolean"},
		{"log level", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"debug log level", map[string]string{"LOG_LEVEL": "debug"}, ""},
		{"target above threshold", map[string]string{"GROW_TARGET_PERCENT": "85"}, "must be below SLOTKEEPER_GROW_THRESHOLD_PERCENT"},
		{"max below initial size", map[string]string{"GROW_MAX_SIZE_GIB": "50"}, "below SLOTKEEPER_VOLUME_SIZE_GIB"},
		{"grow function must be an ARN", map[string]string{"GROW_FUNCTION_ARN": "grow"}, "not an ARN"},
		{"grow function ARN", map[string]string{"GROW_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:grow"}, ""},
		{"relative data mount", map[string]string{"DATA_MOUNT": "data"}, "absolute"},
		{"zone without name", map[string]string{"HOSTED_ZONE_ID": "Z123"}, "DNS_NAME: required"},
		{"name without zone", map[string]string{"DNS_NAME": "kafka.internal"}, "HOSTED_ZONE_ID: required"},
		{"dns", map[string]string{"HOSTED_ZONE_ID": "Z123", "DNS_NAME": "kafka.internal."}, ""},
		{"sasl without credentials", map[string]string{"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, "needs SLOTKEEPER_KAFKA_USERNAME"},
		{"unknown sasl", map[string]string{"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"},
		{"sasl", map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_USERNAME": "u", "KAFKA_PASSWORD": "p"}, ""},
		{"safety wait", map[string]string{"SAFETY_MAX_WAIT": "3h"}, "SAFETY_MAX_WAIT"},
		{"sasl with a secret", map[string]string{"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_USERNAME": "u",
			"KAFKA_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf"}, ""},
		{"password and secret", map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_USERNAME": "u", "KAFKA_PASSWORD": "p",
			"KAFKA_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf"}, "set one of the two"},
		{"secret ARN", map[string]string{"KAFKA_PASSWORD_SECRET_ARN": "kafka-password"}, "not a Secrets Manager secret ARN"},
		{"secret ARN of another service", map[string]string{"KAFKA_PASSWORD_SECRET_ARN": "arn:aws:ssm:us-east-1:123456789012:parameter/kafka"}, "not a Secrets Manager secret ARN"},
		{"five modifications a day", map[string]string{"GROW_MAX_PER_DAY": "5"}, "GROW_MAX_PER_DAY: 5 is outside [1, 4]"},
		{"one modification a day", map[string]string{"GROW_MAX_PER_DAY": "1"}, ""},
		{"legacy six hours", map[string]string{"GROW_MIN_INTERVAL": "6h"}, ""},
		{"interval beyond a day", map[string]string{"GROW_MIN_INTERVAL": "25h"}, "GROW_MIN_INTERVAL"},
		{"unplanned safety wait", map[string]string{"UNPLANNED_SAFETY_MAX_WAIT": "forever"}, "UNPLANNED_SAFETY_MAX_WAIT"},
		{"kafka unit", map[string]string{"KAFKA_UNIT": "kafka; reboot"}, "not a systemd unit name"},
		{"kafka unit with suffix", map[string]string{"KAFKA_UNIT": "kafka.service"}, ""},
		{"hook name", map[string]string{"LAUNCH_HOOK": "my hook"}, "not a lifecycle hook name"},
		{"same hook twice", map[string]string{"LAUNCH_HOOK": "kafka-hook", "TERMINATE_HOOK": "kafka-hook"}, "different names"},
		{"custom hooks", map[string]string{"LAUNCH_HOOK": "kafka-in", "TERMINATE_HOOK": "kafka-out"}, ""},
		{"force detach bound", map[string]string{"FORCE_DETACH_AFTER": "0s"}, "FORCE_DETACH_AFTER"},
		{"handover beyond Lambda", map[string]string{"HANDOVER_MAX_WAIT": "20m"}, "HANDOVER_MAX_WAIT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := valid()
			for k, v := range tt.set {
				m[k] = v
			}
			_, err := Load(env(m))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

// EBS's size limits per volume type (gp2, io1, st1, sc1 up to 16 TiB; gp3, io2 up to
// 64 TiB; io1, io2 from 4 GiB; st1, sc1 from 125 GiB) hold for the initial size and
// for the growth cap.
func TestVolumeTypeLimits(t *testing.T) {
	tests := []struct {
		volType            string
		minGiB, maxGiB     int32
		iops               string
		tooSmall, tooLarge string // an initial size just outside the range ("" when 1 GiB is allowed)
	}{
		{"gp2", 1, 16384, "", "", "16385"},
		{"gp3", 1, 65536, "", "", "65537"},
		{"io1", 4, 16384, "100", "3", "16385"},
		{"io2", 4, 65536, "100", "3", "65537"},
		{"st1", 125, 16384, "", "124", "16385"},
		{"sc1", 125, 16384, "", "124", "16385"},
	}
	for _, tt := range tests {
		t.Run(tt.volType, func(t *testing.T) {
			lim, ok := LimitsOf(tt.volType)
			if !ok || lim.MinGiB != tt.minGiB || lim.MaxGiB != tt.maxGiB {
				t.Fatalf("LimitsOf(%s) = %+v, %v; want %d..%d", tt.volType, lim, ok, tt.minGiB, tt.maxGiB)
			}
			load := func(set map[string]string) error {
				m := valid()
				m["VOLUME_TYPE"], m["VOLUME_IOPS"] = tt.volType, tt.iops
				m["VOLUME_SIZE_GIB"] = "500" // within every type's range
				for k, v := range set {
					m[k] = v
				}
				_, err := Load(env(m))
				return err
			}
			max := strconv.Itoa(int(tt.maxGiB))
			for name, set := range map[string]map[string]string{
				"smallest":       {"VOLUME_SIZE_GIB": strconv.Itoa(int(tt.minGiB))},
				"cap at the max": {"GROW_MAX_SIZE_GIB": max},
				"largest":        {"VOLUME_SIZE_GIB": max, "GROW_MAX_SIZE_GIB": max},
			} {
				if err := load(set); err != nil {
					t.Errorf("%s (%v): %v", name, set, err)
				}
			}
			if err := load(map[string]string{"GROW_MAX_SIZE_GIB": strconv.Itoa(int(tt.maxGiB) + 1)}); tt.maxGiB < 65536 &&
				(err == nil || !strings.Contains(err.Error(), "GROW_MAX_SIZE_GIB") || !strings.Contains(err.Error(), "beyond the largest "+tt.volType)) {
				t.Errorf("a cap of max+1 GiB: %v, want a GROW_MAX_SIZE_GIB error", err)
			}
			if err := load(map[string]string{"VOLUME_SIZE_GIB": tt.tooLarge, "GROW_MAX_SIZE_GIB": max}); err == nil || !strings.Contains(err.Error(), "VOLUME_SIZE_GIB") {
				t.Errorf("initial size %s GiB: %v, want a VOLUME_SIZE_GIB error", tt.tooLarge, err)
			}
			if tt.tooSmall != "" {
				err := load(map[string]string{"VOLUME_SIZE_GIB": tt.tooSmall})
				if err == nil || !strings.Contains(err.Error(), "outside what EBS allows for "+tt.volType) {
					t.Errorf("initial size %s GiB: %v, want a VOLUME_SIZE_GIB error", tt.tooSmall, err)
				}
			}
		})
	}
	if _, ok := LimitsOf("standard"); ok {
		t.Errorf("LimitsOf(standard): a type slotkeeper does not create has limits")
	}
}

func TestVarsDocumentEveryVariableRead(t *testing.T) {
	read := map[string]bool{}
	_, _ = Load(func(k string) string { read[strings.TrimPrefix(k, Prefix)] = true; return "" })
	documented := map[string]bool{}
	for _, v := range Vars {
		documented[v.Name] = true
		if !read[v.Name] {
			t.Errorf("SLOTKEEPER_%s is documented but never read", v.Name)
		}
	}
	for k := range read {
		if !documented[k] {
			t.Errorf("SLOTKEEPER_%s is read but not documented in Vars", k)
		}
	}
}

// The README's configuration reference is the operators' copy of Vars: every
// variable, with the same default, must be in it.
func TestREADMEDocumentsEveryVariable(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, v := range Vars {
		row := "| `" + Prefix + v.Name + "` | "
		i := strings.Index(readme, row)
		if i < 0 {
			t.Errorf("README lacks a configuration row for %s%s", Prefix, v.Name)
			continue
		}
		line := readme[i : i+strings.Index(readme[i:], "\n")]
		if v.Default != "" && !strings.Contains(line, "`"+v.Default+"`") {
			t.Errorf("README row %q does not give the default `%s`", line, v.Default)
		}
		if !strings.Contains(line, v.Meaning) {
			t.Errorf("README row for %s%s does not carry its meaning %q", Prefix, v.Name, v.Meaning)
		}
	}
}
