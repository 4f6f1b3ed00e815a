package probe

import (
	"net/netip"
	"testing"
)

type fakeConn struct{ closed int }

func (c *fakeConn) Close() error { c.closed++; return nil }

// The cache keeps no entry for an endpoint that holds nothing and that no probe uses, so that
// endpoints that come and go with every rollout do not pile up in it.
func TestConnCacheForgetsEndpointsWithNothingLeft(t *testing.T) {
	ep := netip.MustParseAddrPort("192.0.2.1:80")
	var idle connCache[*fakeConn]
	l := idle.take(ep)
	a := &fakeConn{}
	idle.put(ep, l, a, true, true)
	if l2 := idle.take(ep); l2.conn != a || !l2.reused {
		t.Fatalf("the idle connection was not handed out again: %+v", l2)
	} else {
		idle.forget(ep) // while a probe has it
		idle.put(ep, l2, a, true, true)
	}
	if a.closed != 1 || len(idle.eps) != 0 {
		t.Fatalf("after forget: closed %d times, %d entries left", a.closed, len(idle.eps))
	}
	l3 := idle.take(ep)
	idle.put(ep, l3, nil, false, false) // a probe whose connect failed
	if len(idle.eps) != 0 {
		t.Fatalf("%d entries left after a failed connect", len(idle.eps))
	}

	shared := connCache[*fakeConn]{shared: true}
	b := &fakeConn{}
	s1, _ := shared.acquire(ep, func() (*fakeConn, error) { return b, nil })
	s2, _ := shared.acquire(ep, func() (*fakeConn, error) { t.Fatal("a second connection was made"); return nil, nil })
	shared.forget(ep)
	if b.closed != 0 {
		t.Fatal("a shared connection was closed under the probes using it")
	}
	c := &fakeConn{}
	s3, _ := shared.acquire(ep, func() (*fakeConn, error) { return c, nil }) // the endpoint is back
	shared.release(ep, s1)
	shared.release(ep, s2)
	if b.closed != 1 || c.closed != 0 {
		t.Fatalf("forgotten connection closed %d times, new one %d", b.closed, c.closed)
	}
	shared.release(ep, s3)
	shared.close()
	if c.closed != 1 {
		t.Fatalf("close left the shared connection open")
	}
}
