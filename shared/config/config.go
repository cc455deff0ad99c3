// Package config loads slotkeeper's typed configuration from SLOTKEEPER_* environment
// variables. It is read once at cold start; Load reports every problem at once so an
// operator fixes a broken deployment in one pass instead of one variable per deploy.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Prefix is the prefix of every configuration variable.
const Prefix = "SLOTKEEPER_"

// Config is the validated configuration shared by every function.
type Config struct {
	// Cluster names the Kafka cluster; it is the lease table's partition key and the
	// value of the slotkeeper:cluster tag on every resource slotkeeper manages.
	Cluster string
	// ASGName is the Auto Scaling group whose lifecycle events slotkeeper handles.
	ASGName string
	// Table is the DynamoDB lease table.
	Table string
	// SlotCount is the number of broker slots, numbered 0..SlotCount-1.
	SlotCount int
	// Subnets are the slot subnets: slot i lives in Subnets[i mod len(Subnets)].
	Subnets []string
	// SecurityGroups are attached to every slot ENI created by slotkeeper.
	SecurityGroups []string
	// NodeIDBase is added to the slot number to form the Kafka node id.
	NodeIDBase int
	// ENI selects address mode: true gives each slot a fixed secondary ENI; false uses
	// the holder's primary private IP.
	ENI bool
	// Volume describes the data volume created on a slot's first use.
	Volume VolumeConfig
	// HeartbeatInterval is how often long waits send RecordLifecycleActionHeartbeat.
	HeartbeatInterval time.Duration
	// AttachTimeout bounds every wait for a volume or ENI to detach or attach.
	AttachTimeout time.Duration
	// Grow is the disk growth policy.
	Grow GrowConfig
	// DNS is where the slots' Route 53 records live; zero when DNS is not managed.
	DNS DNSConfig
	// Kafka is how slotkeeper reaches the cluster for safety and health checks.
	Kafka KafkaConfig
	// SafetyMaxWait bounds how long a planned termination waits for removal safety.
	SafetyMaxWait time.Duration
	// SafetyRecheck is the first interval between removal-safety checks (it backs off).
	SafetyRecheck time.Duration
	// UnplannedSafetyMaxWait bounds the removal-safety wait (removal token included)
	// of an unplanned termination of an instance that is still running.
	UnplannedSafetyMaxWait time.Duration
	// StopCommand is the shell command SSM runs on a broker for a controlled shutdown.
	StopCommand string
	// KafkaUnit is the broker's systemd unit, which must be inactive after StopCommand.
	KafkaUnit string
	// ForceDetachAfter is how long terminate waits for a plain detach from an instance
	// that may still run Kafka (stopping, shutting-down) before it forces it, loudly.
	ForceDetachAfter time.Duration
	// HandoverMaxWait bounds how long a launch waits for a leaving holder of its AZ's
	// slot to release it.
	HandoverMaxWait time.Duration
	// LaunchHook and TerminateHook are the lifecycle hook names whose events
	// slotkeeper handles; events of other hooks are ignored.
	LaunchHook, TerminateHook string
	// SSMTimeout bounds each wait for an SSM command's result.
	SSMTimeout time.Duration
	// ClaimTTL is how long a claim may stay unbound before reconcile may release it.
	ClaimTTL time.Duration
	// AlertTopicARN is the SNS topic for operator alerts; empty = metrics and logs only.
	AlertTopicARN string
	// MetricsNamespace is the CloudWatch namespace of the embedded metrics.
	MetricsNamespace string
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
}

// VolumeConfig is the specification of a slot's data volume.
type VolumeConfig struct {
	SizeGiB        int32
	Type           string
	IOPS           int32 // 0 = the volume type's default
	ThroughputMiBs int32 // 0 = the volume type's default (gp3 only)
	Encrypted      bool
	KMSKeyID       string // empty = the account's default EBS key
	Device         string // device name given to AttachVolume, e.g. /dev/sdf
}

// GrowConfig is the disk growth policy: new size = max(size × (1 + StepPercent/100),
// size + MinStepGiB, used ÷ TargetPercent/100), rounded up, capped at MaxSizeGiB.
type GrowConfig struct {
	ThresholdPercent int    // the disk alarm fires at this use
	TargetPercent    int    // use to bring the disk back to
	StepPercent      int    // minimum growth, in percent of the current size
	MinStepGiB       int32  // minimum growth, in GiB
	MaxSizeGiB       int32  // never grow beyond (also never beyond the volume type's maximum)
	FunctionARN      string // the grow function; the alarm action invokes it. Empty: no alarms
	DataMount        string // mount point of the data volume on the broker
	// MaxPerDay is how many modifications of one volume may start in a rolling 24
	// hours (EBS allows 4).
	MaxPerDay int
	// MinInterval is the least time between the starts of two modifications of one
	// volume; 0 = none beyond EBS's own rules (6h is EBS's older rule).
	MinInterval time.Duration
}

// VolumeLimits is the range of sizes EBS allows for a volume type, in GiB.
type VolumeLimits struct{ MinGiB, MaxGiB int32 }

// volumeLimits are EBS's size limits per volume type: gp2, io1, st1 and sc1 up to
// 16 TiB, gp3 and io2 up to 64 TiB; io1 and io2 at least 4 GiB, st1 and sc1 at least
// 125 GiB.
var volumeLimits = map[string]VolumeLimits{
	"gp2": {1, 16384}, "gp3": {1, 65536},
	"io1": {4, 16384}, "io2": {4, 65536},
	"st1": {125, 16384}, "sc1": {125, 16384},
}

// LimitsOf returns EBS's size limits for volume type t; ok is false for a type
// slotkeeper does not know (standard, say), whose limits it does not enforce.
func LimitsOf(t string) (VolumeLimits, bool) {
	l, ok := volumeLimits[t]
	return l, ok
}

// DNSConfig is the private hosted zone and name under which slot records live.
type DNSConfig struct {
	HostedZoneID string // empty: DNS not managed
	Name         string // broker-<slot>.<Name>, bootstrap.<Name>
	TTL          int64
}

// Enabled reports whether slotkeeper manages DNS records.
func (d DNSConfig) Enabled() bool { return d.HostedZoneID != "" }

// KafkaConfig is how to reach the Kafka cluster.
type KafkaConfig struct {
	Bootstrap     []string // host:port; empty: Kafka checks are skipped
	TLS           bool
	SASLMechanism string // "", PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
	Username      string
	// Password is the SASL password: SLOTKEEPER_KAFKA_PASSWORD, or, when
	// PasswordSecretARN is set, the secret's value, filled in at cold start by the
	// functions that talk to Kafka (see package secrets).
	Password string
	// PasswordSecretARN is the Secrets Manager secret that holds the SASL password.
	PasswordSecretARN string
}

// Var documents one configuration variable; Vars is the reference the README mirrors.
type Var struct {
	Name, Default, Meaning string
}

// Vars lists every variable Load reads, with its default and meaning. An empty
// default means no default: the variable is required unless its meaning says when it
// may be left out (SECURITY_GROUPS, VOLUME_KMS_KEY_ID).
var Vars = []Var{
	{"CLUSTER", "", "Cluster name: lease partition key, slotkeeper:cluster tag value, resource name prefix. [a-zA-Z0-9-], at most 40 characters."},
	{"ASG_NAME", "", "Name of the broker Auto Scaling group; events for any other group are ignored."},
	{"TABLE", "", "DynamoDB lease table (partition key cluster (S), sort key slot (N))."},
	{"SLOT_COUNT", "", "Number of broker slots (1..1000)."},
	{"SUBNETS", "", "Comma-separated subnet ids; slot i lives in subnet[i mod n], which fixes its AZ."},
	{"SECURITY_GROUPS", "", "Comma-separated security group ids for slot ENIs (required when SLOTKEEPER_ENI=true)."},
	{"NODE_ID_BASE", "0", "Kafka node.id of slot i is NODE_ID_BASE + i."},
	{"ENI", "true", "true: each slot owns a secondary ENI with a fixed IP (device index 1). false: the holder's primary IP is used."},
	{"VOLUME_SIZE_GIB", "100", "Size of a slot's data volume when it is first created."},
	{"VOLUME_TYPE", "gp3", "EBS volume type: gp2, gp3, io1, io2, st1, sc1."},
	{"VOLUME_IOPS", "0", "Provisioned IOPS (gp3, io1, io2); 0 = the type's default."},
	{"VOLUME_THROUGHPUT", "0", "Throughput in MiB/s (gp3 only); 0 = the type's default."},
	{"VOLUME_ENCRYPTED", "true", "Encrypt new data volumes."},
	{"VOLUME_KMS_KEY_ID", "", "KMS key for new data volumes; empty = the account's default EBS key."},
	{"VOLUME_DEVICE", "/dev/sdf", "Device name the data volume is attached at."},
	{"LAUNCH_HOOK", "slotkeeper-launch", "Name of the group's launch lifecycle hook; launch events of any other hook are ignored."},
	{"TERMINATE_HOOK", "slotkeeper-terminate", "Name of the group's terminate lifecycle hook; terminate events of any other hook are ignored."},
	{"HEARTBEAT_INTERVAL", "60s", "How often long waits extend the lifecycle action (must be below the hook's heartbeat timeout)."},
	{"ATTACH_TIMEOUT", "4m", "Upper bound on each wait for a volume or ENI to detach or attach."},
	{"GROW_THRESHOLD_PERCENT", "80", "Disk use (percent of the data mount) at which the slot's alarm invokes the grow function."},
	{"GROW_TARGET_PERCENT", "60", "Disk use a growth brings the volume back to (used ÷ target)."},
	{"GROW_STEP_PERCENT", "10", "Minimum growth, in percent of the current size."},
	{"GROW_MIN_STEP_GIB", "10", "Minimum growth, in GiB."},
	{"GROW_MAX_SIZE_GIB", "16384", "Volumes never grow beyond this size, nor beyond their type's maximum (16384 for gp2, io1, st1, sc1; 65536 for gp3, io2); at the cap slotkeeper alerts instead."},
	{"GROW_MAX_PER_DAY", "4", "Most modifications of one volume started in a rolling 24 hours (1..4; EBS allows 4); a growth beyond it waits."},
	{"GROW_MIN_INTERVAL", "0s", "Least time between the starts of two modifications of one volume (0s..24h); 6h is EBS's older rule."},
	{"GROW_FUNCTION_ARN", "", "ARN of the grow function, the action of every slot's disk alarm. Empty: slotkeeper manages no disk alarms."},
	{"DATA_MOUNT", "/var/lib/kafka", "Mount point of the slot's data volume on the broker (alarm dimension, filesystem growth)."},
	{"HOSTED_ZONE_ID", "", "Private Route 53 hosted zone of the slot records. Empty: DNS is not managed."},
	{"DNS_NAME", "", "Domain under which broker-<slot> and bootstrap records live (required with HOSTED_ZONE_ID)."},
	{"DNS_TTL", "60", "TTL in seconds of the slot records."},
	{"KAFKA_BOOTSTRAP", "", "Comma-separated host:port of Kafka brokers for safety and health checks. Empty: no Kafka checks (planned terminations wait for nothing)."},
	{"KAFKA_TLS", "false", "Connect to Kafka over TLS."},
	{"KAFKA_SASL_MECHANISM", "", "SASL mechanism: empty (none), PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."},
	{"KAFKA_USERNAME", "", "SASL user name (required with a SASL mechanism)."},
	{"KAFKA_PASSWORD", "", "SASL password, for local and development use; in AWS use KAFKA_PASSWORD_SECRET_ARN. Set one of the two with a SASL mechanism."},
	{"KAFKA_PASSWORD_SECRET_ARN", "", "ARN of a Secrets Manager secret whose value is the SASL password, read once per cold start by the functions that talk to Kafka."},
	{"SAFETY_MAX_WAIT", "5m", "Longest a planned termination waits for the removal token and removal safety before it proceeds anyway, loudly; counted from the removal's first delivery, and never into the part of the invocation the rest of the removal needs."},
	{"SAFETY_RECHECK", "2s", "First interval between removal-safety checks; it doubles up to 4s (or this value, if larger), so a held termination proceeds within seconds of the ISRs being full."},
	{"UNPLANNED_SAFETY_MAX_WAIT", "2m", "Longest an unplanned termination of a still-running instance waits for the removal token and removal safety before it proceeds anyway, loudly; never longer than SAFETY_MAX_WAIT."},
	{"STOP_COMMAND", "systemctl stop kafka", "Shell command run over SSM on a leaving broker for a controlled shutdown."},
	{"KAFKA_UNIT", "kafka", "systemd unit of the broker: after the stop command it must be inactive, or the data volume stays attached."},
	{"FORCE_DETACH_AFTER", "5m", "Longest terminate waits for a plain detach from an instance that may still run Kafka (stopping, shutting-down) before it forces the detach, with an alert."},
	{"HANDOVER_MAX_WAIT", "7m", "Longest a launch waits for the leaving holder of its AZ's slot to release it (a handover) before the event is retried."},
	{"SSM_TIMEOUT", "5m", "Upper bound on each wait for an SSM command's result."},
	{"CLAIM_TTL", "15m", "A claim unbound for this long, whose claimer is not waiting in Pending:Wait, is released by reconcile."},
	{"ALERT_TOPIC_ARN", "", "SNS topic for operator alerts (growth at the cap, forced unsafe terminations, abandons). Empty: logs and metrics only."},
	{"METRICS_NAMESPACE", "Slotkeeper", "CloudWatch namespace of the embedded-metric-format lines."},
	{"LOG_LEVEL", "info", "debug, info, warn or error."},
}

var (
	clusterRE   = regexp.MustCompile(`^[a-zA-Z0-9-]{1,40}$`)
	subnetRE    = regexp.MustCompile(`^subnet-[0-9a-f]+$`)
	sgRE        = regexp.MustCompile(`^sg-[0-9a-f]+$`)
	deviceRE    = regexp.MustCompile(`^/dev/(sd|xvd)[b-z]$`)
	unitRE      = regexp.MustCompile(`^[A-Za-z0-9:_.@-]{1,250}$`)
	hookRE      = regexp.MustCompile(`^[A-Za-z0-9_/-]{1,255}$`)
	secretARNRE = regexp.MustCompile(`^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$`)
	volumeType  = map[string]bool{"gp2": true, "gp3": true, "io1": true, "io2": true, "st1": true, "sc1": true}
)

// Load reads the configuration through getenv (os.Getenv in production) and validates
// it. The returned error joins every problem found.
func Load(getenv func(string) string) (Config, error) {
	p := parser{getenv: getenv}
	defaults := map[string]string{}
	for _, v := range Vars {
		defaults[v.Name] = v.Default
	}
	p.defaults = defaults

	c := Config{
		Cluster:           p.str("CLUSTER", true),
		ASGName:           p.str("ASG_NAME", true),
		Table:             p.str("TABLE", true),
		SlotCount:         p.int("SLOT_COUNT", 1, 1000),
		Subnets:           p.list("SUBNETS", true),
		NodeIDBase:        p.int("NODE_ID_BASE", 0, 1<<30),
		ENI:               p.bool("ENI"),
		HeartbeatInterval: p.duration("HEARTBEAT_INTERVAL", 5*time.Second, 2*time.Hour),
		AttachTimeout:     p.duration("ATTACH_TIMEOUT", 10*time.Second, 6*time.Minute),
		MetricsNamespace:  p.str("METRICS_NAMESPACE", true),
		Volume: VolumeConfig{
			SizeGiB:        int32(p.int("VOLUME_SIZE_GIB", 1, 65536)), // and within the type's limits, below
			Type:           p.str("VOLUME_TYPE", true),
			IOPS:           int32(p.int("VOLUME_IOPS", 0, 256000)),
			ThroughputMiBs: int32(p.int("VOLUME_THROUGHPUT", 0, 2000)),
			Encrypted:      p.bool("VOLUME_ENCRYPTED"),
			KMSKeyID:       p.str("VOLUME_KMS_KEY_ID", false),
			Device:         p.str("VOLUME_DEVICE", true),
		},
	}
	c.SecurityGroups = p.list("SECURITY_GROUPS", c.ENI)
	c.Grow = GrowConfig{
		ThresholdPercent: p.int("GROW_THRESHOLD_PERCENT", 1, 99),
		TargetPercent:    p.int("GROW_TARGET_PERCENT", 1, 99),
		StepPercent:      p.int("GROW_STEP_PERCENT", 0, 1000),
		MinStepGiB:       int32(p.int("GROW_MIN_STEP_GIB", 1, 16384)),
		MaxSizeGiB:       int32(p.int("GROW_MAX_SIZE_GIB", 1, 65536)),
		FunctionARN:      p.str("GROW_FUNCTION_ARN", false),
		DataMount:        p.str("DATA_MOUNT", true),
		MaxPerDay:        p.int("GROW_MAX_PER_DAY", 1, 4),
		MinInterval:      p.duration("GROW_MIN_INTERVAL", 0, 24*time.Hour),
	}
	c.DNS = DNSConfig{
		HostedZoneID: p.str("HOSTED_ZONE_ID", false),
		Name:         strings.TrimSuffix(p.str("DNS_NAME", false), "."),
		TTL:          int64(p.int("DNS_TTL", 1, 86400)),
	}
	c.Kafka = KafkaConfig{
		Bootstrap:     p.list("KAFKA_BOOTSTRAP", false),
		TLS:           p.bool("KAFKA_TLS"),
		SASLMechanism: p.str("KAFKA_SASL_MECHANISM", false),
		Username:      p.str("KAFKA_USERNAME", false),
		Password:      p.str("KAFKA_PASSWORD", false),

		PasswordSecretARN: p.str("KAFKA_PASSWORD_SECRET_ARN", false),
	}
	c.SafetyMaxWait = p.duration("SAFETY_MAX_WAIT", 0, 2*time.Hour)
	c.SafetyRecheck = p.duration("SAFETY_RECHECK", 100*time.Millisecond, 10*time.Minute)
	c.UnplannedSafetyMaxWait = p.duration("UNPLANNED_SAFETY_MAX_WAIT", 0, 2*time.Hour)
	c.StopCommand = p.str("STOP_COMMAND", true)
	c.KafkaUnit = p.str("KAFKA_UNIT", true)
	c.ForceDetachAfter = p.duration("FORCE_DETACH_AFTER", time.Second, time.Hour)
	c.HandoverMaxWait = p.duration("HANDOVER_MAX_WAIT", 0, 14*time.Minute)
	c.LaunchHook = p.str("LAUNCH_HOOK", true)
	c.TerminateHook = p.str("TERMINATE_HOOK", true)
	c.SSMTimeout = p.duration("SSM_TIMEOUT", time.Second, 14*time.Minute)
	c.ClaimTTL = p.duration("CLAIM_TTL", time.Minute, 24*time.Hour)
	c.AlertTopicARN = p.str("ALERT_TOPIC_ARN", false)
	if lvl := p.str("LOG_LEVEL", true); lvl != "" {
		if err := c.LogLevel.UnmarshalText([]byte(lvl)); err != nil {
			p.fail("LOG_LEVEL", "want debug, info, warn or error, got %q", lvl)
		}
	}

	if c.Cluster != "" && !clusterRE.MatchString(c.Cluster) {
		p.fail("CLUSTER", "%q: use 1-40 characters of [a-zA-Z0-9-]", c.Cluster)
	}
	for _, s := range c.Subnets {
		if !subnetRE.MatchString(s) {
			p.fail("SUBNETS", "%q is not a subnet id", s)
		}
	}
	for _, s := range c.SecurityGroups {
		if !sgRE.MatchString(s) {
			p.fail("SECURITY_GROUPS", "%q is not a security group id", s)
		}
	}
	if c.Volume.Type != "" && !volumeType[c.Volume.Type] {
		p.fail("VOLUME_TYPE", "%q: want one of gp2, gp3, io1, io2, st1, sc1", c.Volume.Type)
	}
	if lim, ok := LimitsOf(c.Volume.Type); ok {
		if c.Volume.SizeGiB > 0 && (c.Volume.SizeGiB < lim.MinGiB || c.Volume.SizeGiB > lim.MaxGiB) {
			p.fail("VOLUME_SIZE_GIB", "%d GiB is outside what EBS allows for %s volumes (%d..%d GiB)", c.Volume.SizeGiB, c.Volume.Type, lim.MinGiB, lim.MaxGiB)
		}
		if c.Grow.MaxSizeGiB > lim.MaxGiB {
			p.fail("GROW_MAX_SIZE_GIB", "%d GiB is beyond the largest %s volume EBS allows (%d GiB): growths past it would fail forever", c.Grow.MaxSizeGiB, c.Volume.Type, lim.MaxGiB)
		}
	}
	if c.Volume.IOPS > 0 && !(c.Volume.Type == "gp3" || c.Volume.Type == "io1" || c.Volume.Type == "io2") {
		p.fail("VOLUME_IOPS", "provisioned IOPS apply to gp3, io1 and io2 only, not %s", c.Volume.Type)
	}
	if (c.Volume.Type == "io1" || c.Volume.Type == "io2") && c.Volume.IOPS == 0 {
		p.fail("VOLUME_IOPS", "required for volume type %s", c.Volume.Type)
	}
	if c.Volume.ThroughputMiBs > 0 && c.Volume.Type != "gp3" {
		p.fail("VOLUME_THROUGHPUT", "throughput applies to gp3 only, not %s", c.Volume.Type)
	}
	if c.Volume.KMSKeyID != "" && !c.Volume.Encrypted {
		p.fail("VOLUME_KMS_KEY_ID", "set, but SLOTKEEPER_VOLUME_ENCRYPTED is false")
	}
	if c.Volume.Device != "" && !deviceRE.MatchString(c.Volume.Device) {
		p.fail("VOLUME_DEVICE", "%q: want /dev/sd[b-z] or /dev/xvd[b-z]", c.Volume.Device)
	}
	if c.Grow.TargetPercent >= c.Grow.ThresholdPercent && c.Grow.ThresholdPercent > 0 {
		p.fail("GROW_TARGET_PERCENT", "%d must be below SLOTKEEPER_GROW_THRESHOLD_PERCENT (%d), or growth would not quiet the alarm", c.Grow.TargetPercent, c.Grow.ThresholdPercent)
	}
	if c.Grow.MaxSizeGiB > 0 && c.Volume.SizeGiB > c.Grow.MaxSizeGiB {
		p.fail("GROW_MAX_SIZE_GIB", "%d is below SLOTKEEPER_VOLUME_SIZE_GIB (%d)", c.Grow.MaxSizeGiB, c.Volume.SizeGiB)
	}
	if c.Grow.FunctionARN != "" && !strings.HasPrefix(c.Grow.FunctionARN, "arn:") {
		p.fail("GROW_FUNCTION_ARN", "%q is not an ARN", c.Grow.FunctionARN)
	}
	if c.Grow.DataMount != "" && !strings.HasPrefix(c.Grow.DataMount, "/") {
		p.fail("DATA_MOUNT", "%q is not an absolute path", c.Grow.DataMount)
	}
	if c.DNS.HostedZoneID != "" && c.DNS.Name == "" {
		p.fail("DNS_NAME", "required with SLOTKEEPER_HOSTED_ZONE_ID")
	}
	if c.DNS.Name != "" && c.DNS.HostedZoneID == "" {
		p.fail("HOSTED_ZONE_ID", "required with SLOTKEEPER_DNS_NAME")
	}
	switch c.Kafka.SASLMechanism {
	case "":
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.Kafka.Username == "" || (c.Kafka.Password == "" && c.Kafka.PasswordSecretARN == "") {
			p.fail("KAFKA_SASL_MECHANISM", "%s needs SLOTKEEPER_KAFKA_USERNAME and SLOTKEEPER_KAFKA_PASSWORD_SECRET_ARN (or, outside AWS, SLOTKEEPER_KAFKA_PASSWORD)", c.Kafka.SASLMechanism)
		}
	default:
		p.fail("KAFKA_SASL_MECHANISM", "%q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.Kafka.SASLMechanism)
	}
	if c.Kafka.Password != "" && c.Kafka.PasswordSecretARN != "" {
		p.fail("KAFKA_PASSWORD", "set, and so is SLOTKEEPER_KAFKA_PASSWORD_SECRET_ARN: set one of the two")
	}
	if a := c.Kafka.PasswordSecretARN; a != "" && !secretARNRE.MatchString(a) {
		p.fail("KAFKA_PASSWORD_SECRET_ARN", "%q is not a Secrets Manager secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>)", a)
	}
	if c.AlertTopicARN != "" && !strings.HasPrefix(c.AlertTopicARN, "arn:") {
		p.fail("ALERT_TOPIC_ARN", "%q is not an ARN", c.AlertTopicARN)
	}
	if c.KafkaUnit != "" && !unitRE.MatchString(c.KafkaUnit) {
		p.fail("KAFKA_UNIT", "%q is not a systemd unit name", c.KafkaUnit)
	}
	for _, h := range []struct{ name, v string }{{"LAUNCH_HOOK", c.LaunchHook}, {"TERMINATE_HOOK", c.TerminateHook}} {
		if h.v != "" && !hookRE.MatchString(h.v) {
			p.fail(h.name, "%q is not a lifecycle hook name (1-255 of [A-Za-z0-9-_/])", h.v)
		}
	}
	if c.LaunchHook != "" && c.LaunchHook == c.TerminateHook {
		p.fail("TERMINATE_HOOK", "%q is also SLOTKEEPER_LAUNCH_HOOK: the two hooks need different names", c.TerminateHook)
	}
	if c.HeartbeatInterval > 0 && c.AttachTimeout > 0 && c.HeartbeatInterval >= c.AttachTimeout {
		p.fail("HEARTBEAT_INTERVAL", "%s must be shorter than SLOTKEEPER_ATTACH_TIMEOUT (%s)", c.HeartbeatInterval, c.AttachTimeout)
	}
	if err := errors.Join(p.errs...); err != nil {
		return Config{}, fmt.Errorf("invalid slotkeeper configuration:\n%w", err)
	}
	return c, nil
}

// SubnetOf returns the subnet slot lives in.
func (c Config) SubnetOf(slot int) string { return c.Subnets[slot%len(c.Subnets)] }

// NodeID returns the Kafka node id of slot.
func (c Config) NodeID(slot int) int { return c.NodeIDBase + slot }

type parser struct {
	getenv   func(string) string
	defaults map[string]string
	errs     []error
}

func (p *parser) fail(name, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s%s: %s", Prefix, name, fmt.Sprintf(format, args...)))
}

func (p *parser) raw(name string) string {
	if v := strings.TrimSpace(p.getenv(Prefix + name)); v != "" {
		return v
	}
	return p.defaults[name]
}

func (p *parser) str(name string, required bool) string {
	v := p.raw(name)
	if v == "" && required {
		p.fail(name, "required")
	}
	return v
}

func (p *parser) list(name string, required bool) []string {
	var out []string
	for _, s := range strings.Split(p.raw(name), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 && required {
		p.fail(name, "required (comma-separated list)")
	}
	return out
}

func (p *parser) int(name string, lo, hi int) int {
	v := p.raw(name)
	if v == "" {
		p.fail(name, "required")
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.fail(name, "%q is not an integer", v)
		return 0
	}
	if n < lo || n > hi {
		p.fail(name, "%d is outside [%d, %d]", n, lo, hi)
		return 0
	}
	return n
}

func (p *parser) bool(name string) bool {
	v := p.raw(name)
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, "%q is not a boolean (true/false)", v)
	}
	return b
}

func (p *parser) duration(name string, lo, hi time.Duration) time.Duration {
	v := p.raw(name)
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail(name, "%q is not a duration (e.g. 30s, 5m)", v)
		return 0
	}
	if d < lo || d > hi {
		p.fail(name, "%s is outside [%s, %s]", d, lo, hi)
		return 0
	}
	return d
}
