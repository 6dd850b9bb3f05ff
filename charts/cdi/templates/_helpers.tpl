{{/* Names, labels, the image and the shared pod settings of the cdi chart. */}}

{{- define "cdi.namespace" -}}
{{- /* helm lint renders with no namespace at all; any real install has one */ -}}
{{- if not (has .Release.Namespace (list "cdi" "")) -}}
{{- fail (printf "install cdi into the namespace cdi (helm install cdi charts/cdi -n cdi --create-namespace): its controllers keep their upload signers there, not in %q" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{- define "cdi.commonLabels" -}}
app.kubernetes.io/part-of: cdi
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cdi.labels" -}}
{{ include "cdi.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "controller"). */}}
{{- define "cdi.selector" -}}
app.kubernetes.io/name: cdi-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "cdi.componentLabels" -}}
{{ include "cdi.commonLabels" .ctx }}
{{ include "cdi.selector" . }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cdi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "cdi.webhookService" -}}cdi-webhook{{- end -}}
{{- define "cdi.uploadProxyService" -}}cdi-uploadproxy{{- end -}}

{{/* The pod security context every cdi pod runs with: the image's non-root user. */}}
{{- define "cdi.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cdi.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* nodeSelector, tolerations, affinity and pull secrets of a component's values: (dict "ctx" $ "v" .Values.x). */}}
{{- define "cdi.placement" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The webhook's CA and serving certificate: kept from the existing Secret on upgrade, else generated. */}}
{{- define "cdi.webhookCerts" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace "cdi-webhook-tls" -}}
{{- if and $secret (index $secret.data "ca.crt") -}}
ca.crt: {{ index $secret.data "ca.crt" }}
tls.crt: {{ index $secret.data "tls.crt" }}
tls.key: {{ index $secret.data "tls.key" }}
{{- else -}}
{{- $svc := include "cdi.webhookService" . -}}
{{- $ca := genCA "cdi-webhook-ca" 3650 -}}
{{- $names := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc .Release.Namespace) nil $names 3650 $ca -}}
ca.crt: {{ $ca.Cert | b64enc }}
tls.crt: {{ $cert.Cert | b64enc }}
tls.key: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}
