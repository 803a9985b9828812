"""Watching what broker-issued credentials do: CloudTrail, attribution, detections, notices.

CloudTrail files (S3, optionally announced on SQS) are read once across schedulers
(:mod:`.ingest`), their records joined to session, grant and person (:mod:`.attribution`),
matched against the policy's detection rules (:mod:`.detections`), answered through the grant
service's own revocation path (:mod:`.responses`), and told to people (:mod:`.notify`). The
long-lived IAM user keys the broker replaces are inventoried, read-only (:mod:`.keys`).
"""
