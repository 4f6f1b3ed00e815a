package probe

import (
	"context"
	"errors"
	"os"
	"syscall"
)

// Reasons a probe failed for a cause of the manager's own rather than of the target's. They
// are Result.Local and the values of a Prometheus label, so they are snake_case and stable.
//
// Why they are kept apart (DESIGN.md §2, "fail static"): when the manager runs out of file
// descriptors or ports, or stops a probe because it is shutting down or losing its lease,
// every probe fails at once. Counted as target failures, that would trip healthy breakers
// and empty their front Services across the whole cluster, for trouble that is only the
// manager's. Such a probe is Neutral: it says nothing about the target.
const (
	// LocalFileDescriptors: the manager's process or host ran out of file descriptors
	// (EMFILE, ENFILE), so it could not open a socket.
	LocalFileDescriptors = "file_descriptors"
	// LocalBuffers: the kernel had no socket buffers or memory for the manager (ENOBUFS,
	// ENOMEM).
	LocalBuffers = "buffers"
	// LocalEphemeralPorts: no local port was free to connect from (EADDRNOTAVAIL from
	// connect), typically when too many connections sit in TIME_WAIT.
	LocalEphemeralPorts = "ephemeral_ports"
	// LocalCanceled: the manager cancelled the probe (the context given to Probe), because it
	// is shutting down, lost its leadership, or the breaker or endpoint was removed. The
	// probe's own timeout is not this: it stays a target Failure. The scheduler records
	// nothing of a probe it cancelled (internal/runner), so this reason reaches neither status nor
	// a metric.
	LocalCanceled = "canceled"
	// LocalStartedLate is not produced by the probers: internal/runner uses it for a probe whose
	// start came after its own deadline (due time plus timeout), because the manager was too
	// busy to send it; such a probe is not sent at all. It is declared here so that every
	// reason lives in one place.
	LocalStartedLate = "started_late"
)

// LocalReasons lists every reason the manager counts, so that a metric can create its series
// up front and a dashboard sees zeros rather than no data. LocalCanceled is not among them:
// the scheduler records nothing of a probe it cancelled, not even as a local error.
var LocalReasons = []string{
	LocalFileDescriptors,
	LocalBuffers,
	LocalEphemeralPorts,
	LocalStartedLate,
}

// localErrnos maps the errnos that describe the manager's own shortage to their reason.
// They reach the probers wrapped in *net.OpError, *os.SyscallError, *url.Error or TLS
// errors, so they are matched with errors.Is.
var localErrnos = [...]struct {
	errno  syscall.Errno
	reason string
}{
	{syscall.EMFILE, LocalFileDescriptors},
	{syscall.ENFILE, LocalFileDescriptors},
	{syscall.ENOBUFS, LocalBuffers},
	{syscall.ENOMEM, LocalBuffers},
	{syscall.EADDRNOTAVAIL, LocalEphemeralPorts},
}

// localReason says whether err, returned by a probe whose caller's context is parent, is the
// manager's own, and why. The order matters:
//
//  1. A passed deadline (context.DeadlineExceeded) is the probe's own timeout, a target
//     failure, whatever else happened too. Probers therefore pass their probe context's
//     error in place of err once that context is done, so that a deadline is seen as one.
//  2. An errno of the manager's own shortage (localErrnos).
//  3. A cancelled parent: the manager stopped the probe. Only the parent counts; a context
//     the prober derived for itself says nothing about the manager.
func localReason(parent context.Context, err error) (string, bool) {
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		return "", false
	}
	for _, e := range localErrnos {
		if errors.Is(err, e.errno) {
			if e.errno == syscall.EADDRNOTAVAIL && !fromConnect(err) {
				// Only connect runs out of ports; elsewhere the errno means something else.
				continue
			}
			return e.reason, true
		}
	}
	if parent != nil && errors.Is(parent.Err(), context.Canceled) {
		return LocalCanceled, true
	}
	return "", false
}

// fromConnect reports whether err came from connect(2), or carries no syscall name at all,
// as when a DialFunc returns a bare errno.
func fromConnect(err error) bool {
	var sc *os.SyscallError
	return !errors.As(err, &sc) || sc.Syscall == "connect"
}

// localMessage is the short status.lastProbe message for a probe that ended for reason.
func localMessage(reason string, err error) string {
	if reason == LocalCanceled {
		return "probe cancelled by the manager (not counted)"
	}
	for _, e := range localErrnos {
		if e.reason == reason && errors.Is(err, e.errno) {
			if reason == LocalEphemeralPorts {
				return "manager error: out of ephemeral ports, " + e.errno.Error() + " (not counted)"
			}
			return "manager error: " + e.errno.Error() + " (not counted)"
		}
	}
	return "manager error: " + reason + " (not counted)"
}
