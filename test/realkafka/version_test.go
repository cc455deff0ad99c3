package realkafka_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// The Kafka the tests run is the Kafka a new deployment runs: the runtime's pinned
// version, the launcher's, and the template's default KafkaVersion agree.
func TestVersionsAgree(t *testing.T) {
	for _, c := range []struct {
		file string
		re   *regexp.Regexp
	}{
		{"../../scripts/kafka-runtime.pom.xml", regexp.MustCompile(`<kafka\.version>([^<]+)</kafka\.version>`)},
		{"../../template.yaml", regexp.MustCompile(`(?m)^  KafkaVersion:\n(?:    .*\n)*?    Default: (\S+)$`)},
	} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		m := c.re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s: no Kafka version found", c.file)
		}
		if string(m[1]) != realkafka.Version {
			t.Errorf("%s: Kafka %s, the tests run %s", c.file, m[1], realkafka.Version)
		}
	}
}
