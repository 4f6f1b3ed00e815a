package main

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestKrewManifestNamesTheArchivesMakeBuilds renders the krew manifest template as
// krew-release-bot would, and checks that it offers exactly the platforms `make plugin-dist`
// builds, each with the archive name and binary that target writes.
func TestKrewManifestNamesTheArchivesMakeBuilds(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PLUGIN_PLATFORMS \?= (.+)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("the Makefile sets no PLUGIN_PLATFORMS")
	}
	built := strings.Fields(string(m[1]))

	template, err := os.ReadFile("../../plugins/tripswitch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const tag = "v1.2.3"
	rendered := regexp.MustCompile(`\{\{addURIAndSha "([^"]+)" \.TagName \}\}`).ReplaceAllString(string(template), "uri: $1\n    sha256: 0")
	rendered = strings.ReplaceAll(rendered, "{{ .TagName }}", tag)
	var manifest struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			Version   string
			Platforms []struct {
				Selector struct{ MatchLabels map[string]string }
				URI      string
				Bin      string
			}
		}
	}
	if err := yaml.Unmarshal([]byte(rendered), &manifest); err != nil {
		t.Fatalf("the rendered manifest is not YAML: %v\n%s", err, rendered)
	}
	if manifest.Kind != "Plugin" || manifest.Metadata.Name != "tripswitch" || manifest.Spec.Version != tag {
		t.Fatalf("manifest kind %q, name %q, version %q", manifest.Kind, manifest.Metadata.Name, manifest.Spec.Version)
	}
	var offered []string
	for _, p := range manifest.Spec.Platforms {
		os, arch := p.Selector.MatchLabels["os"], p.Selector.MatchLabels["arch"]
		offered = append(offered, os+"/"+arch)
		archive := fmt.Sprintf("https://github.com/tripswitch/tripswitch/releases/download/%s/kubectl-tripswitch_%s_%s_%s.tar.gz", tag, tag, os, arch)
		if p.URI != archive {
			t.Errorf("%s/%s: uri %q, want the archive make plugin-dist writes, %q", os, arch, p.URI, archive)
		}
		bin := "kubectl-tripswitch"
		if os == "windows" {
			bin += ".exe"
		}
		if p.Bin != bin {
			t.Errorf("%s/%s: bin %q, want %q", os, arch, p.Bin, bin)
		}
	}
	slices.Sort(offered)
	slices.Sort(built)
	if !slices.Equal(offered, built) {
		t.Errorf("the manifest offers %v, make plugin-dist builds %v", offered, built)
	}
}
