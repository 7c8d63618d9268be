{{- define "netinspect.labels" -}}
app.kubernetes.io/name: netinspect
{{- end }}

{{- define "netinspect.probe" -}}
{{- if .Values.web.basicAuth }}
tcpSocket:
  port: metrics
{{- else }}
httpGet:
  path: {{ .path }}
  port: metrics
  {{- if or .Values.web.tls.enabled .Values.web.configTLS }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}
