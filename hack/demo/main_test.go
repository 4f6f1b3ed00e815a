package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestDemo runs `make demo`'s story non-interactively, so that it cannot rot: the manager
// binary is built fresh, and the transitions must appear in order.
func TestDemo(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("KUBEBUILDER_ASSETS is not set: run the tests with `make test`")
		}
		t.Skip("KUBEBUILDER_ASSETS is not set; `make test` builds the control plane and runs this test")
	}
	t.Chdir(filepath.Join("..", ".."))
	dir := t.TempDir()
	manager := filepath.Join(dir, "manager")
	if out, err := exec.Command("go", "build", "-o", manager, "./cmd/manager").CombinedOutput(); err != nil {
		t.Fatalf("building the manager: %v\n%s", err, out)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	err := run(ctx, options{manager: manager, dir: dir, timeout: time.Minute, openTime: 3 * time.Second, out: &out})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo failed: %v", err)
	}
	story := regexp.MustCompile(`(?s)payments\s+Closed\s.*Killing the backend.*payments\s+Open\s+payments-backend\s+payments\s+1\s+0\s+ConsecutiveFailures` +
		`.*Restoring the backend.*payments\s+Closed\s+payments-backend\s+payments\s+1\s+1\s+TrialSucceeded.*Done`)
	if !story.MatchString(out.String()) {
		t.Fatal("the demo's output does not tell the story healthy -> killed -> Open -> restored -> Closed")
	}
	if _, err := os.Stat(filepath.Join(dir, "kubeconfig")); err != nil {
		t.Fatalf("no kubeconfig written: %v", err)
	}
}
