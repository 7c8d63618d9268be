package bearer

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
)

func TestToken(t *testing.T) {
	jwt := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_~+/=="
	tests := []struct {
		name    string
		headers []string
		want    string
		ok      bool
	}{
		{"a JWT", []string{"Bearer " + jwt}, jwt, true},
		{"scheme in another case", []string{"bEaReR abc"}, "abc", true},
		{"several spaces after the scheme", []string{"Bearer   abc"}, "abc", true},
		{"padding", []string{"Bearer YWJj=="}, "YWJj==", true},
		{"no header", nil, "", false},
		{"two headers", []string{"Bearer abc", "Bearer def"}, "", false},
		{"basic auth", []string{"Basic cHJvbTpzM2NyZXQ="}, "", false},
		{"scheme only", []string{"Bearer"}, "", false},
		{"scheme and a space", []string{"Bearer "}, "", false},
		{"empty value", []string{""}, "", false},
		{"two words", []string{"Bearer abc def"}, "", false},
		{"trailing space", []string{"Bearer abc "}, "", false},
		{"tab instead of space", []string{"Bearer\tabc"}, "", false},
		{"control byte", []string{"Bearer ab\x00c"}, "", false},
		{"only padding", []string{"Bearer =="}, "", false},
		{"padding inside", []string{"Bearer ab=c"}, "", false},
		{"quote", []string{`Bearer "abc"`}, "", false},
		{"non-ASCII", []string{"Bearer abcé"}, "", false},
		{"longest accepted", []string{"Bearer " + strings.Repeat("a", MaxTokenBytes)}, strings.Repeat("a", MaxTokenBytes), true},
		{"too long", []string{"Bearer " + strings.Repeat("a", MaxTokenBytes+1)}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.headers {
				h.Add("Authorization", v)
			}
			got, ok := Token(h)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Token(%q) = %q, %v; want %q, %v", tt.headers, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// bearerGrammar is RFC 6750's credentials production, as a reference the
// hand-written parser must agree with.
var bearerGrammar = regexp.MustCompile(`^(?i:bearer) +([A-Za-z0-9._~+/-]+=*)$`)

func FuzzToken(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer a.b.c", "Bearer  YWJj==", "Basic x", "Bearer", "Bearer a b", "Bearer ==", "Bearer\x00x", "BEARER ~+/-_."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		token, ok := Token(http.Header{"Authorization": {value}})
		m := bearerGrammar.FindStringSubmatch(value)
		wantOK := m != nil && len(m[1]) <= MaxTokenBytes
		if ok != wantOK {
			t.Fatalf("Token(%q) ok = %v, grammar says %v", value, ok, wantOK)
		}
		if ok && token != m[1] {
			t.Fatalf("Token(%q) = %q, grammar's token %q", value, token, m[1])
		}
		if !ok && token != "" {
			t.Fatalf("Token(%q) refused but returned %q", value, token)
		}
	})
}
