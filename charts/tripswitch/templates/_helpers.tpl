{{/*
tripswitch.name is the chart's name, or nameOverride.
*/}}
{{- define "tripswitch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
tripswitch.fullname prefixes every object's name: fullnameOverride, else the release's name
when it contains the chart's name, else <release>-<name>. A release called tripswitch gives the
names of the kustomize install (config/default), tripswitch-controller-manager and so on.
*/}}
{{- define "tripswitch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "tripswitch.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
tripswitch.image is the image of the manager, the responder, the node agent and the uninstall hook.
*/}}
{{- define "tripswitch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
tripswitch.args renders a container's args as a YAML list: the words (a subcommand), then
every flag in values <component>.flags that is not null, as --name=value sorted by name, with
the value through tpl so that it may name the release (whole numbers as integers), then <component>.extraArgs. Without the
responder, the manager is told it has none (--responder-service=), so that Open fronts with
whenOpen: Respond reject rather than publish a responder that is not there.
*/}}
{{- define "tripswitch.args" -}}
{{- $values := index .root.Values .component }}
{{- $flags := deepCopy ($values.flags | default dict) }}
{{- if and (eq .component "manager") (not .root.Values.responder.enabled) }}
{{- $_ := set $flags "responder-service" "" }}
{{- end }}
{{- range .words }}
- {{ . | quote }}
{{- end }}
{{- range $name, $value := $flags }}
{{- if not (kindIs "invalid" $value) }}
{{- /* Numbers from values files are float64: 1000000 would print as 1e+06. */}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
- {{ printf "--%s=%s" $name (tpl (toString $value) $.root) | quote }}
{{- end }}
{{- end }}
{{- range $values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
