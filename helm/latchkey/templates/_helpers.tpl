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
{{- else if .Values.ingress.enabled }}
{{- include "latchkey.ingressUrl" . }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "latchkey.fullname" .) .Release.Namespace (int .Values.service.ports.http) }}
{{- end }}
{{- end }}

{{/* The URL browsers reach the ingress at. */}}
{{- define "latchkey.ingressUrl" -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.https) .Values.ingress.host }}
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
Paths inside the container. The config renders them, the pod template mounts them: one place.
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
database: /etc/latchkey/database
databaseUrl: /etc/latchkey/database/url
databaseCa: /etc/latchkey/database-ca
data: /var/lib/latchkey
{{- end }}

{{- define "latchkey.postgres" -}}
{{- if eq .Values.store.backend "postgres" }}true{{ end }}
{{- end }}

{{/* Pods to run: replicaCount, or when it is null 1 with sled and 3 with PostgreSQL. */}}
{{- define "latchkey.replicas" -}}
{{- if not (kindIs "invalid" .Values.replicaCount) }}
{{- int .Values.replicaCount }}
{{- else if include "latchkey.postgres" . }}3
{{- else }}1
{{- end }}
{{- end }}

{{/*
The Secret and key holding the database URL: the user's (store.postgres.existingSecret), else the
chart's Secret under database-url (from store.postgres.url).
*/}}
{{- define "latchkey.databaseUrlSecret" -}}
{{- default (include "latchkey.fullname" .) .Values.store.postgres.existingSecret }}
{{- end }}

{{- define "latchkey.databaseUrlKey" -}}
{{- if .Values.store.postgres.existingSecret }}
{{- .Values.store.postgres.existingSecretKey }}
{{- else }}database-url
{{- end }}
{{- end }}

{{/* Whether the database's CA is mounted (store.postgres.caSecret or caConfigMap). */}}
{{- define "latchkey.databaseCa" -}}
{{- if and (include "latchkey.postgres" .) (or .Values.store.postgres.caSecret .Values.store.postgres.caConfigMap) }}true{{ end }}
{{- end }}

{{/*
Checks that fail rendering with a clear message; included once, by the workload (the StatefulSet
with sled, the Deployment with PostgreSQL). No message quotes the database URL.
*/}}
{{- define "latchkey.validate" -}}
{{- $pg := .Values.store.postgres }}
{{- if include "latchkey.postgres" . }}
{{- if and $pg.existingSecret $pg.url }}
{{- fail "store.postgres.existingSecret and store.postgres.url are both set: keep the URL in the existing Secret only, or drop existingSecret" }}
{{- end }}
{{- if not (or $pg.existingSecret $pg.url) }}
{{- fail "store.backend postgres needs the database URL: store.postgres.existingSecret (a Secret holding postgres://user:password@host:5432/db under store.postgres.existingSecretKey), or store.postgres.url (stored in the chart's Secret)" }}
{{- end }}
{{- if and $pg.url .Values.existingSecret }}
{{- fail "store.postgres.url and existingSecret are both set: the chart then creates no Secret to hold the URL; put it in a Secret and set store.postgres.existingSecret (it may be the same Secret)" }}
{{- end }}
{{- if and $pg.caSecret $pg.caConfigMap }}
{{- fail "store.postgres.caSecret and store.postgres.caConfigMap are both set: the database's CA comes from one of them" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if not (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the HorizontalPodAutoscaler's CPU utilisation is a share of the request" }}
{{- end }}
{{- end }}
{{- else }}
{{- if gt (int (include "latchkey.replicas" .)) 1 }}
{{- fail (printf "replicaCount is %d: the sled store holds an exclusive lock on its data directory: one replica only; for many replicas set store.backend=postgres (a Deployment over one PostgreSQL database)" (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs store.backend=postgres: the sled store runs one replica only, which nothing may scale" }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.enabled needs ingress.host: the host name browsers and OpenID Connect clients use, e.g. login.example.com" }}
{{- end }}
{{- if and .Values.ingress.tlsSecretName (not .Values.ingress.https) }}
{{- fail "ingress.tlsSecretName is set but ingress.https is false: TLS at the ingress means browsers use https" }}
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

{{/*
The pod's topologySpreadConstraints: the given list (a constraint without a labelSelector gets the
pod's selector labels), or when null, with PostgreSQL, a soft spread over nodes and zones.
*/}}
{{- define "latchkey.topologySpread" -}}
{{- $constraints := list }}
{{- if not (kindIs "invalid" .Values.topologySpreadConstraints) }}
{{- $constraints = .Values.topologySpreadConstraints }}
{{- else if include "latchkey.postgres" . }}
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" $key "whenUnsatisfiable" "ScheduleAnyway") }}
{{- end }}
{{- end }}
{{- $selector := dict "matchLabels" (include "latchkey.selectorLabels" . | fromYaml) }}
{{- range $constraints }}
{{- $constraint := deepCopy . }}
{{- if not $constraint.labelSelector }}
{{- $_ := set $constraint "labelSelector" $selector }}
{{- end }}
{{ list $constraint | toYaml }}
{{- end }}
{{- end }}

{{/*
The pod template (metadata and spec) that the StatefulSet (sled) and the Deployment (PostgreSQL)
share. With sled the data volume comes from the StatefulSet's claim template; with PostgreSQL
nothing durable is written locally (only the file transport's mail), so it is an emptyDir.
*/}}
{{- define "latchkey.podTemplate" -}}
{{- $paths := include "latchkey.paths" . | fromYaml }}
{{- $fullname := include "latchkey.fullname" . }}
{{- $probes := .Values.probes }}
{{- $pg := .Values.store.postgres -}}
metadata:
  annotations:
    # Rolls the pod when the config (or a custom mail template) changes.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "latchkey.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "latchkey.serviceAccountName" . }}
  automountServiceAccountToken: false
  # Service links would inject LATCHKEY_<OTHER SERVICE>_* variables into the environment,
  # which latchkey reads as config and rejects as unknown keys.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ int .Values.terminationGracePeriodSeconds }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: latchkey
      image: {{ include "latchkey.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - {{ $paths.config }}
      ports:
        - name: grpc
          containerPort: 50051
          protocol: TCP
        - name: http-metrics
          containerPort: 9464
          protocol: TCP
      {{- if .Values.tls.enabled }}
      # Kubernetes gRPC probes cannot do TLS: probe the plain HTTP port instead.
      startupProbe:
        httpGet:
          path: /readyz
          port: http-metrics
        periodSeconds: {{ int $probes.startup.periodSeconds }}
        failureThreshold: {{ int $probes.startup.failureThreshold }}
        timeoutSeconds: {{ int $probes.startup.timeoutSeconds }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-metrics
        periodSeconds: {{ int $probes.liveness.periodSeconds }}
        failureThreshold: {{ int $probes.liveness.failureThreshold }}
        timeoutSeconds: {{ int $probes.liveness.timeoutSeconds }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http-metrics
        periodSeconds: {{ int $probes.readiness.periodSeconds }}
        failureThreshold: {{ int $probes.readiness.failureThreshold }}
        timeoutSeconds: {{ int $probes.readiness.timeoutSeconds }}
      {{- else }}
      # grpc.health.v1 with service "": the server's overall status.
      startupProbe:
        grpc:
          port: 50051
        periodSeconds: {{ int $probes.startup.periodSeconds }}
        failureThreshold: {{ int $probes.startup.failureThreshold }}
        timeoutSeconds: {{ int $probes.startup.timeoutSeconds }}
      # Not gRPC health, which is NOT_SERVING while the database is unreachable: a restart would not
      # mend that. /healthz fails only when a restart is the way back.
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-metrics
        periodSeconds: {{ int $probes.liveness.periodSeconds }}
        failureThreshold: {{ int $probes.liveness.failureThreshold }}
        timeoutSeconds: {{ int $probes.liveness.timeoutSeconds }}
      readinessProbe:
        grpc:
          port: 50051
        periodSeconds: {{ int $probes.readiness.periodSeconds }}
        failureThreshold: {{ int $probes.readiness.failureThreshold }}
        timeoutSeconds: {{ int $probes.readiness.timeoutSeconds }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: {{ $paths.data }}
        - name: config
          mountPath: {{ $paths.config }}
          subPath: config.toml
          readOnly: true
        - name: secrets
          mountPath: {{ $paths.secrets }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if include "latchkey.postgres" . }}
        - name: database
          mountPath: {{ $paths.database }}
          readOnly: true
        {{- if include "latchkey.databaseCa" . }}
        - name: database-ca
          mountPath: {{ $paths.databaseCa }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if .Values.mail.smtp.caCert }}
        - name: config
          mountPath: {{ $paths.smtpCa }}
          subPath: smtp-ca.pem
          readOnly: true
        {{- end }}
        {{- /*
        Each template file is mounted on its own (subPath): a whole-ConfigMap volume would also
        put Kubernetes' `..data` folders in templates_dir, which the server reads as template ids.
        */}}
        {{- range $id, $template := .Values.mail.templates }}
        {{- range $part := list "subject.txt" "body.html" "body.txt" }}
        - name: config
          mountPath: {{ printf "%s/%s/%s" $paths.templates $id $part }}
          subPath: {{ include "latchkey.templateKey" (dict "id" $id "part" $part) }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: {{ $paths.tls }}
          readOnly: true
        {{- if .Values.tls.clientCa.enabled }}
        - name: client-ca
          mountPath: {{ $paths.clientCa }}
          readOnly: true
        {{- end }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ $fullname }}
    - name: secrets
      secret:
        secretName: {{ include "latchkey.secretName" . }}
        defaultMode: 0440
        items:
          - key: server-key
            path: server-key
          {{- if include "latchkey.smtpPassword" . }}
          - key: smtp-password
            path: smtp-password
          {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if include "latchkey.postgres" . }}
    # Nothing durable lives here with PostgreSQL: only the file transport's mail (testing).
    - name: data
      emptyDir:
        sizeLimit: 256Mi
    - name: database
      secret:
        secretName: {{ include "latchkey.databaseUrlSecret" . }}
        defaultMode: 0440
        items:
          - key: {{ include "latchkey.databaseUrlKey" . }}
            path: url
    {{- if $pg.caSecret }}
    - name: database-ca
      secret:
        secretName: {{ $pg.caSecret }}
        defaultMode: 0444
        items:
          - key: {{ $pg.caKey }}
            path: {{ $pg.caKey }}
    {{- else if $pg.caConfigMap }}
    - name: database-ca
      configMap:
        name: {{ $pg.caConfigMap }}
        defaultMode: 0444
        items:
          - key: {{ $pg.caKey }}
            path: {{ $pg.caKey }}
    {{- end }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- if .Values.tls.clientCa.enabled }}
    - name: client-ca
      secret:
        secretName: {{ .Values.tls.clientCa.secretName | default .Values.tls.secretName }}
        defaultMode: 0444
        items:
          - key: {{ .Values.tls.clientCa.key }}
            path: {{ .Values.tls.clientCa.key }}
    {{- end }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "latchkey.topologySpread" . | trim }}
  topologySpreadConstraints:
    {{- . | nindent 4 }}
  {{- end }}
{{- end }}
