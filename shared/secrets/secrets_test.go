package secrets

import (
	"errors"
	"testing"
)

func TestPasswordOf(t *testing.T) {
	tests := []struct {
		secret, want string
		wantErr      bool
	}{
		{"s3cr3t", "s3cr3t", false},
		{" spaced password ", " spaced password ", false}, // a password is taken as it is
		{`{"username":"u","password":"p@ss"}`, "p@ss", false},
		{`  {"password":"p"}`, "p", false},
		{`{"username":"u"}`, "", true},
		{`{"password":""}`, "", true},
		{`{"password":`, "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		got, err := passwordOf(tt.secret)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("passwordOf(%q) = %q, %v; want %q, error %v", tt.secret, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := passwordOf(`{"username":"u"}`); !errors.Is(err, ErrEmpty) {
		t.Errorf("a JSON secret without a password: %v, want ErrEmpty", err)
	}
}

func FuzzPasswordOf(f *testing.F) {
	for _, s := range []string{"s3cr3t", `{"password":"p"}`, `{"username":"u"}`, "", "{"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := passwordOf(s)
		if err == nil && got == "" {
			t.Fatalf("passwordOf(%q): an empty password without an error", s)
		}
		if err != nil && got != "" {
			t.Fatalf("passwordOf(%q): %q with an error %v", s, got, err)
		}
	})
}
