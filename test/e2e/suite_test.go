package e2e_test

import (
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// cluster is the suite's rig: one control plane, kube-controller-manager and kube-proxy for
// the whole run.
var cluster *rig.Rig

func TestMain(m *testing.M) {
	rig.Main(m)
}

func TestE2E(t *testing.T) {
	rig.Require(t)
	RegisterFailHandler(Fail)
	RunSpecs(t, "tripswitch data-plane suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyDuration(2 * time.Second)

	cluster = rig.Start(rig.Options{
		CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")},
	})
})

var _ = AfterEach(func() {
	if CurrentSpecReport().Failed() {
		cluster.WriteLogTails(GinkgoWriter, 30)
		cluster.WriteNetworkState(GinkgoWriter)
	}
	rig.NoteFailedAttempt()
})

var _ = ReportAfterSuite("specs that passed only on a retry", func(report Report) {
	Expect(rig.WriteFlakyReport(report)).To(Succeed())
})
