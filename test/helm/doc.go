// Package helm tests the Helm chart charts/tripswitch with the Helm SDK: that it renders what
// config/default installs, that a real API server accepts it, and its install, upgrade,
// uninstall and reinstall with the manager running. It is a module of its own so that the
// Helm SDK's dependencies stay out of tripswitch's go.mod.
package helm
