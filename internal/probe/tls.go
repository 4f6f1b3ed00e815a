package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
)

// TLSSpec says how a probe checks the endpoint's certificate. Its fields are strings, so that
// a Spec compares with ==.
type TLSSpec struct {
	// CABundle, when set, is one or more PEM certificates: the authorities trusted instead of
	// the system's.
	CABundle string
	// ServerName, when set, is sent as SNI and must be named by the certificate. Otherwise an
	// HTTP probe uses its Host, and either probe the endpoint's address.
	ServerName string
}

// certPool parses a CA bundle strictly: every PEM block must be a certificate that parses,
// and there must be at least one. (x509.CertPool.AppendCertsFromPEM skips what it cannot
// read, so a bundle with a typo would silently trust nothing, and fail every probe.)
func certPool(bundle string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	rest := []byte(bundle)
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if n == 1 {
				return nil, errors.New("no PEM certificate found")
			}
			return pool, nil
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is a %s, not a CERTIFICATE", n, excerpt(block.Type))
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		pool.AddCert(cert)
	}
}

// clientConfig is the tls.Config of a probe. serverName is the default server name (an
// HTTP probe's Host), which TLSSpec.ServerName overrides; empty, each connection names its
// endpoint's address.
func (t TLSSpec) clientConfig(serverName string, insecureSkipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         serverName,
		InsecureSkipVerify: insecureSkipVerify, //nolint:gosec // only when the user asks for it
		MinVersion:         tls.VersionTLS12,
	}
	if t.ServerName != "" {
		cfg.ServerName = t.ServerName
	}
	if t.CABundle != "" {
		pool, err := certPool(t.CABundle)
		if err != nil {
			return nil, fmt.Errorf("caBundle: %w", err)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// recordingCreds keeps the error of a gRPC connection's last TLS handshake. gRPC reports a
// failed handshake to the RPC as UNAVAILABLE with the error's text, which quotes the
// certificate (the names it holds); with the error itself, the probe can say what went wrong
// in its own words instead.
type recordingCreds struct {
	credentials.TransportCredentials
	last *atomic.Pointer[error]
}

func (c recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.last.Store(&err)
	} else {
		c.last.Store(nil)
	}
	return conn, info, err
}

func (c recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{TransportCredentials: c.TransportCredentials.Clone(), last: c.last}
}
