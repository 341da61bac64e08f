"""The fields the seed's deployment guide promises, in one place for every test that checks
them (shared/seed/PHASE3D_D_DEPLOYMENT_GUIDE.md: the start answer and the progress snapshot)."""

SEED_START_FIELDS = {"scan_id", "status", "message", "progress_url", "websocket_url", "sse_url"}
SEED_PROGRESS_FIELDS = {
    "scan_id",
    "status",
    "current_stage",
    "stages",
    "overall_progress",
    "overall_eta",
    "overall_eta_formatted",
    "stage_progress",
    "stage_eta",
    "stage_eta_formatted",
    "stage_throughput",
    "message",
}
