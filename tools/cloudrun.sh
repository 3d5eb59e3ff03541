#!/usr/bin/env bash
# The mlprod API on Cloud Run: the one place the pipelines' gcloud lines live (Jenkinsfile and the workflows call it).
#   bash tools/cloudrun.sh deploy ENV IMAGE   deploy IMAGE as the service mlprod-api-ENV (the settings of service.yaml)
#   bash tools/cloudrun.sh url ENV            print the service's URL
# PROJECT and REGION name the Google Cloud project and region; gcloud must be authenticated (the pipelines do it
# with their credentials). The service follows environment ENV's live bundle (`mlprod serve --env ENV`, config from
# Secret Manager), and takes its JWT secret from Secret Manager too: nothing secret is on this line.
# DRY_RUN=1 prints the command, one argument a line, instead of running it: no machine of the tests reaches Google
# Cloud, so tests/test_pipelines.py checks the line that way.
set -euo pipefail
usage() { echo "usage: bash tools/cloudrun.sh deploy ENV IMAGE | url ENV" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 env=$2
: "${PROJECT:?set PROJECT to the Google Cloud project}" "${REGION:?set REGION, e.g. europe-west1}"
service="mlprod-api-$env"
case "$action" in
  deploy)
    [ $# -eq 3 ] || usage
    cmd=(gcloud run deploy "$service" --project "$PROJECT" --region "$REGION" --image "$3"
         --service-account "mlprod-api@$PROJECT.iam.gserviceaccount.com" --allow-unauthenticated
         --port 8080 --cpu 1 --memory 1Gi --cpu-boost --concurrency 8 --min-instances 0 --max-instances 10
         --timeout 30
         --set-env-vars "MLPROD_ENV=$env,MLPROD_CONFIG=/etc/mlprod/mlprod.yaml,WEB_CONCURRENCY=1,GUNICORN_THREADS=8"
         --set-secrets "MLPROD_JWT_SECRET=mlprod-jwt-secret-$env:latest,/etc/mlprod/mlprod.yaml=mlprod-config:latest"
         --labels "app=mlprod,env=$env" --quiet) ;;
  url)
    [ $# -eq 2 ] || usage
    cmd=(gcloud run services describe "$service" --project "$PROJECT" --region "$REGION"
         --format "value(status.url)") ;;
  *) usage ;;
esac
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%s\n' "${cmd[@]}"; else exec "${cmd[@]}"; fi
