// Command chartgen writes the generated part of the Helm chart charts/tripswitch from config/,
// so that the chart never drifts from the kustomize install: it takes `kustomize build
// config/default` (and config/prometheus, with the same namespace and name prefix, and
// config/default with the config/observers component, for observers.enabled), turns
// the namespaces, the name prefix and the settings an operator tunes into template values,
// and lists every flag of the manager, the responder and the node agent, read from their
// -help, as values; and it writes the optional coredns-custom ConfigMap, whose stanzas are
// the manager's own (internal/external.DNSRewrite). `make chart` runs it; `make verify` runs it
// again and fails when the committed chart differs. The chart's other files (Chart.yaml, _helpers.tpl, NOTES.txt, the uninstall hook,
// the dashboard ConfigMap) are written by hand.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	kustomize := flag.String("kustomize", "kustomize", "the kustomize binary")
	manager := flag.String("manager", "", "the manager binary, whose -help lists its flags")
	chart := flag.String("chart", "charts/tripswitch", "the chart directory")
	flag.Parse()
	if err := run(*kustomize, *manager, *chart); err != nil {
		fmt.Fprintln(os.Stderr, "chartgen:", err)
		os.Exit(1)
	}
}

func run(kustomize, manager, chart string) error {
	if manager == "" {
		return fmt.Errorf("-manager is required")
	}
	install, err := kustomizeBuild(kustomize, "config/default")
	if err != nil {
		return err
	}
	observed, err := kustomizeWith(kustomize, "resources:\n- ../default\ncomponents:\n- ../observers\n")
	if err != nil {
		return err
	}
	monitoring, err := kustomizeMonitoring(kustomize)
	if err != nil {
		return err
	}
	managerHelp, err := help(manager)
	if err != nil {
		return err
	}
	responderHelp, err := help(manager, "responder")
	if err != nil {
		return err
	}
	agentHelp, err := help(manager, "agent")
	if err != nil {
		return err
	}
	files, err := generate(install, observed, monitoring, map[string][]flagDoc{"manager": managerHelp, "responder": responderHelp,
		"agent": agentHelp})
	if err != nil {
		return err
	}
	dashboard, err := os.ReadFile("config/grafana/tripswitch-dashboard.json")
	if err != nil {
		return err
	}
	files["files/tripswitch-dashboard.json"] = dashboard
	// CRDs are named after config's: one that config no longer has must go.
	stale, err := filepath.Glob(filepath.Join(chart, "crds", "*.yaml"))
	if err != nil {
		return err
	}
	for _, path := range stale {
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	for name, data := range files {
		path := filepath.Join(chart, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func kustomizeBuild(kustomize, dir string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(kustomize, "build", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w: %s", dir, err, stderr.String())
	}
	return out, nil
}

// kustomizeMonitoring builds config/prometheus as config/default would if it listed it: in
// the same namespace and with the same name prefix.
func kustomizeMonitoring(kustomize string) ([]byte, error) {
	return kustomizeWith(kustomize, "namespace: tripswitch-system\nnamePrefix: tripswitch-\nresources:\n- ../prometheus\n")
}

// kustomizeWith builds a kustomization of config's directories, given as its text (paths
// relative to a directory in config/).
func kustomizeWith(kustomize, kustomization string) ([]byte, error) {
	dir, err := os.MkdirTemp("config", ".chartgen-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		return nil, err
	}
	return kustomizeBuild(kustomize, dir)
}

// help runs the binary with -help and parses the flags it lists.
func help(binary string, args ...string) ([]flagDoc, error) {
	cmd := exec.Command(binary, append(args, "-help")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// -help exits 0 or 2, depending on how the flag set handles errors; the output is what counts.
	_ = cmd.Run()
	flags, err := parseHelp(out.String())
	if err != nil {
		return nil, fmt.Errorf("%s %s -help: %w", binary, strings.Join(args, " "), err)
	}
	return flags, nil
}
