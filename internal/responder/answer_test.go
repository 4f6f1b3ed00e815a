package responder

import (
	"testing"
	"time"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	open := Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateOpen}
	at := func(b Breaker, until time.Time) Breaker { b.OpenUntil = until; return b }
	in := func(b Breaker, s tripswitchv1alpha1.State) Breaker { b.State = s; return b }
	for _, tt := range []struct {
		name  string
		b     Breaker
		known bool
		want  Answer
		body  string
	}{
		{"open, 7s left", at(open, now.Add(7*time.Second)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 7, PushbackMillis: 7000, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 7s\n"},
		{"open, rounded up to the second and the millisecond", at(open, now.Add(6*time.Second+1)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 7, PushbackMillis: 6001, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 7s\n"},
		{"open, 1ns left is still 1s", at(open, now.Add(1)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 1s\n"},
		{"open, 10 minutes left", at(open, now.Add(10*time.Minute)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 600, PushbackMillis: 600000, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 600s\n"},
		{"open, openUntil now", at(open, now), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 1s\n"},
		{"open, openUntil passed", at(open, now.Add(-time.Minute)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 1s\n"},
		{"open without openUntil (ForceOpen)", open, true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments is open", Holding: true},
			"circuit breaker shop/payments is open; retry in 1s\n"},
		{"half-open, a stale openUntil is ignored", at(in(open, tripswitchv1alpha1.StateHalfOpen), now.Add(time.Hour)), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments is half-open", Holding: true},
			"circuit breaker shop/payments is half-open; retry in 1s\n"},
		{"closed a moment ago", in(open, tripswitchv1alpha1.StateClosed), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments has just closed"},
			"circuit breaker shop/payments has just closed; retry in 1s\n"},
		{"no state yet", in(open, ""), true,
			Answer{Breaker: "shop/payments", RetryAfter: 1, PushbackMillis: 1000, Message: "circuit breaker shop/payments has no state yet"},
			"circuit breaker shop/payments has no state yet; retry in 1s\n"},
		{"unknown", at(open, now.Add(time.Minute)), false,
			Answer{Message: "service unavailable: circuit breaker open"},
			"service unavailable: circuit breaker open\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(tt.b, tt.known, now)
			if got != tt.want {
				t.Errorf("Decide = %+v\nwant     %+v", got, tt.want)
			}
			if body := got.Body(); body != tt.body {
				t.Errorf("Body = %q, want %q", body, tt.body)
			}
		})
	}
}

func TestEncodeGRPCMessage(t *testing.T) {
	for in, want := range map[string]string{
		"":                                      "",
		"circuit breaker shop/payments is open": "circuit breaker shop/payments is open",
		"100% down":                             "100%25 down",
		"%":                                     "%25",
		"line\nbreak":                           "line%0Abreak",
		"tab\there":                             "tab%09here",
		"naïve":                                 "na%C3%AFve",
		"\x7f~ ":                                "%7F~ ",
		"\xff":                                  "%FF",
	} {
		if got := encodeGRPCMessage(in); got != want {
			t.Errorf("encodeGRPCMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGRPCContentType(t *testing.T) {
	for in, want := range map[string]string{
		"application/grpc":                "application/grpc",
		"application/grpc+proto":          "application/grpc",
		"application/GRPC+json":           "application/grpc",
		"application/grpc; charset=utf-8": "application/grpc",
		"application/grpc-web":            "application/grpc-web",
		"application/grpc-web+proto":      "application/grpc-web",
		"application/grpc-web-text":       "application/grpc-web-text",
		"application/grpc-web-text+proto": "application/grpc-web-text",
		"application/grpcx":               "",
		"application/grpc-webx":           "",
		"application/json":                "",
		"text/plain":                      "",
		"":                                "",
		"application/grp":                 "",
	} {
		got, ok := grpcContentType(in)
		if got != want || ok != (want != "") {
			t.Errorf("grpcContentType(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
