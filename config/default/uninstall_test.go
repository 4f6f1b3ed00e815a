// Package install tests how the default install is removed: the Makefile's uninstall and
// undeploy targets, run with a stand-in kubectl that records what it is asked to do.
package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeKubectl writes a kubectl that logs each call as one line and fails the deletion of
// CircuitBreakers when failBreakers is set, as a kubectl whose --wait timed out would. Like
// the real one given -f -, it reads its whole input before it exits.
func fakeKubectl(t *testing.T, failBreakers bool) (kubectl, logFile string) {
	t.Helper()
	dir := t.TempDir()
	logFile = filepath.Join(dir, "calls")
	fail := ""
	if failBreakers {
		fail = `case "$*" in *"delete circuitbreakers"*) exit 1;; esac`
	}
	script := "#!/bin/sh\necho \"$*\" >> " + logFile + "\n" + fail + "\ncat >/dev/null\nexit 0\n"
	kubectl = filepath.Join(dir, "kubectl")
	if err := os.WriteFile(kubectl, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return kubectl, logFile
}

// fakeKustomize writes a kustomize that prints a manifest as large as the real install
// (hundreds of KiB, more than a pipe holds), so a kubectl that did not read its input would
// kill it with SIGPIPE every time, not only when the scheduler happens to run kubectl first.
func fakeKustomize(t *testing.T) string {
	t.Helper()
	kustomize := filepath.Join(t.TempDir(), "kustomize")
	script := "#!/bin/sh\nyes '# manifest line' | head -c 262144\n"
	if err := os.WriteFile(kustomize, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return kustomize
}

func runMake(t *testing.T, target, kubectl string) error {
	t.Helper()
	cmd := exec.Command("make", "-s", "-C", filepath.Join("..", ".."), target, "KUBECTL="+kubectl,
		"KUSTOMIZE="+fakeKustomize(t), "CONTROLLER_GEN=/bin/true")
	// A make that runs this test (make test) must not pass its flags down to this one.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MAKEFLAGS=") && !strings.HasPrefix(kv, "MFLAGS=") && !strings.HasPrefix(kv, "MAKELEVEL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	t.Logf("make %s:\n%s", target, out)
	return err
}

func calls(t *testing.T, logFile string) []string {
	t.Helper()
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func TestRemovalDeletesBreakersFirstAndWaits(t *testing.T) {
	for _, target := range []string{"undeploy", "uninstall"} {
		t.Run(target, func(t *testing.T) {
			kubectl, logFile := fakeKubectl(t, false)
			if err := runMake(t, target, kubectl); err != nil {
				t.Fatalf("make %s: %v", target, err)
			}
			got := calls(t, logFile)
			if len(got) != 3 || !strings.HasPrefix(got[0], "get crd circuitbreakers.tripswitch.io") ||
				!strings.HasPrefix(got[1], "delete circuitbreakers.tripswitch.io --all --all-namespaces --wait=true") ||
				!strings.HasPrefix(got[2], "delete ") {
				t.Fatalf("want the breakers deleted and waited for before anything else, got:\n%s", strings.Join(got, "\n"))
			}
		})
	}
}

func TestRemovalStopsWhenBreakersCannotBeFinalized(t *testing.T) {
	for _, target := range []string{"undeploy", "uninstall"} {
		t.Run(target, func(t *testing.T) {
			kubectl, logFile := fakeKubectl(t, true)
			if err := runMake(t, target, kubectl); err == nil {
				t.Fatalf("make %s succeeded although the breakers were not deleted", target)
			}
			for _, call := range calls(t, logFile) {
				if strings.Contains(call, "-f ") {
					t.Fatalf("make %s removed the manager or the CRDs while breakers were left: %q", target, call)
				}
			}
		})
	}
}
