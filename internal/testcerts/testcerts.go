// Package testcerts makes certificate authorities and server certificates for tests, so that
// TLS probes can be tried against real TLS servers on loopback without files on disk.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"sync/atomic"
	"time"
)

// CA is a certificate authority. PEM is its certificate, as a caBundle holds it.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  string
}

var serial atomic.Int64

// NewCA makes a CA named name, valid from an hour ago for a day. It panics on failure, which
// only a broken crypto/rand could cause.
func NewCA(name string) *CA {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key))
	return &CA{cert: must(x509.ParseCertificate(der)), key: key,
		PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// Issue makes a server certificate for the DNS names, valid until notAfter.
func (ca *CA) Issue(notAfter time.Time, names ...string) tls.Certificate {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// NotParsing is PEM-shaped, so that admission's pattern takes it, but its block is no
// certificate: what a bundle with a damaged line looks like.
const NotParsing = "-----BEGIN CERTIFICATE-----\nTUlJQm9vb29vb29vb29vb28=\n-----END CERTIFICATE-----\n"

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
