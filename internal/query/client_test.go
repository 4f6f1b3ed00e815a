package query

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestClientReadsOneNumber(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.FormValue("query"); got != "vector(0.31)" {
			t.Errorf("query %q", got)
		}
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.31"]}]}}`))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Query(context.Background(), "vector(0.31)", time.Now())
	if err != nil || s != (Sample{Value: 0.31}) {
		t.Fatalf("got %+v, %v", s, err)
	}
}

func TestClientBoundsTimeAndSize(t *testing.T) {
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[`))
		series := `{"metric":{"pod":"` + strings.Repeat("x", 1000) + `"},"value":[1700000000,"1"]},`
		for range 2000 { // 2 MB
			if _, err := w.Write([]byte(series)); err != nil {
				return
			}
		}
	}))
	defer huge.Close()
	c, _ := NewClient(huge.URL, 5*time.Second, nil)
	if _, err := c.Query(context.Background(), "up", time.Now()); !errors.Is(err, ErrResponseTooLarge) &&
		(err == nil || !strings.Contains(err.Error(), ErrResponseTooLarge.Error())) {
		t.Fatalf("a 2 MB response: %v", err)
	}

	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		// Read the form first: the server notices a client that went away only once the
		// request body is consumed.
		_ = r.ParseForm()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer hang.Close()
	c, _ = NewClient(hang.URL, 200*time.Millisecond, nil)
	start := time.Now()
	if _, err := c.Query(context.Background(), "up", time.Now()); err == nil {
		t.Fatal("a server that never answers gave a result")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the query took %s, past its 200ms timeout", took)
	}
}
