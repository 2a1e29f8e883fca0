{{/*
Names, labels and small values shared by the templates.
*/}}

{{- define "latchkey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release name + chart name, unless the release name already contains the chart name. Kept to 52
characters so that "-headless" still fits in a 63-character name.
*/}}
{{- define "latchkey.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "latchkey.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "latchkey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "latchkey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "latchkey.labels" -}}
helm.sh/chart: {{ include "latchkey.chart" . }}
{{ include "latchkey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "latchkey.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "latchkey.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding server-key and smtp-password: the user's or the chart's. */}}
{{- define "latchkey.secretName" -}}
{{- default (include "latchkey.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "latchkey.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "latchkey.issuer" -}}
{{- if .Values.issuer }}
{{- .Values.issuer }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "latchkey.fullname" .) .Release.Namespace (int .Values.service.ports.http) }}
{{- end }}
{{- end }}

{{/* Whether the server reads an SMTP password (from the Secret's smtp-password key). */}}
{{- define "latchkey.smtpPassword" -}}
{{- if and (eq .Values.mail.transport "smtp") .Values.mail.smtp.username }}true{{ end }}
{{- end }}

{{/* A ConfigMap key for one part of a custom mail template. */}}
{{- define "latchkey.templateKey" -}}
{{- printf "template.%s.%s" .id .part }}
{{- end }}

{{/*
Paths inside the container. The config renders them, the StatefulSet mounts them: one place.
*/}}
{{- define "latchkey.paths" -}}
config: /etc/latchkey/config.toml
secrets: /etc/latchkey/secrets
serverKey: /etc/latchkey/secrets/server-key
smtpPassword: /etc/latchkey/secrets/smtp-password
smtpCa: /etc/latchkey/smtp-ca.pem
templates: /etc/latchkey/templates
tls: /etc/latchkey/tls
clientCa: /etc/latchkey/client-ca
data: /var/lib/latchkey
{{- end }}

{{/*
Checks that fail rendering with a clear message; included once, by the StatefulSet.
*/}}
{{- define "latchkey.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d: the sled store holds an exclusive lock on its data directory: one replica only; many replicas need the PostgreSQL store, which this chart does not render yet" (int .Values.replicaCount)) }}
{{- end }}
{{- if not .Values.auth.apiKeys }}
{{- fail "auth.apiKeys is empty: the production profile requires at least one API key, e.g. --set-json 'auth.apiKeys=[{\"name\":\"web\",\"sha256\":\"<latchkey hash-key KEY>\",\"scopes\":[\"links\",\"sessions\"]}]'" }}
{{- end }}
{{- if and (eq .Values.mail.transport "smtp") (not .Values.mail.smtp.host) }}
{{- fail "mail.smtp.host is empty: mail.transport smtp needs the SMTP server's host (or set mail.transport to file for testing)" }}
{{- end }}
{{- if and .Values.mail.smtp.password (not .Values.mail.smtp.username) }}
{{- fail "mail.smtp.password is set but mail.smtp.username is empty: a password needs a username" }}
{{- end }}
{{- if .Values.existingSecret }}
{{- if .Values.serverKey.value }}
{{- fail "serverKey.value and existingSecret are both set: put the key in the existing Secret under server-key, or drop existingSecret" }}
{{- end }}
{{- if .Values.mail.smtp.password }}
{{- fail "mail.smtp.password and existingSecret are both set: put the password in the existing Secret under smtp-password, or drop existingSecret" }}
{{- end }}
{{- else if and (include "latchkey.smtpPassword" .) (not .Values.mail.smtp.password) }}
{{- fail "mail.smtp.username is set but mail.smtp.password is empty: set mail.smtp.password, or use existingSecret with an smtp-password key" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.tls.clientCa.enabled (not .Values.tls.enabled) }}
{{- fail "tls.clientCa.enabled (mutual TLS) needs tls.enabled" }}
{{- end }}
{{- $least := add (int .Values.shutdownDelaySeconds) 8 }}
{{- if or (lt (int .Values.terminationGracePeriodSeconds) (int $least)) (gt (int .Values.terminationGracePeriodSeconds) 605) }}
{{- fail (printf "terminationGracePeriodSeconds is %d: it must be at least shutdownDelaySeconds + 8 = %d and at most 605 (the server's shutdown_grace_seconds is 5 s less, and must leave 3 s of draining after the shutdown delay), or Kubernetes kills the server mid-drain" (int .Values.terminationGracePeriodSeconds) (int $least)) }}
{{- end }}
{{- end }}
