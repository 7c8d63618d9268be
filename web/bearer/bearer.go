// Package bearer reads the bearer token of an HTTP request (RFC 6750).
//
// It is its own package so that its fuzz test builds without client-go.
package bearer

import (
	"net/http"
	"strings"
)

// MaxTokenBytes bounds the bearer tokens worth sending to the API server.
// ServiceAccount tokens are 1-2 KiB; OIDC tokens with many groups reach a
// few KiB.
const MaxTokenBytes = 16 << 10

// Token returns the token of the request's one "Authorization: Bearer
// <token>" header (RFC 6750 section 2.1: the scheme is case-insensitive and
// the token is a b64token). ok is false when there is no such header, more
// than one, another scheme, an empty token, a token longer than
// MaxTokenBytes, or characters outside b64token (spaces, control bytes, a
// second word): such a request is refused without asking the API server.
func Token(h http.Header) (token string, ok bool) {
	values := h.Values("Authorization")
	if len(values) != 1 {
		return "", false
	}
	scheme, rest, found := strings.Cut(values[0], " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(rest, " ") // credentials = auth-scheme 1*SP token
	if len(token) > MaxTokenBytes || !isB64Token(token) {
		return "", false
	}
	return token, true
}

// isB64Token reports whether s matches b64token = 1*( ALPHA / DIGIT / "-" /
// "." / "_" / "~" / "+" / "/" ) *"=".
func isB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}
