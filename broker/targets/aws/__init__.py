"""Target kind ``aws``: STS sessions named by the credential id (see :mod:`.kind`).

Importing it needs the standard library only; boto3 (the ``aws`` extra) is imported on first use.
"""
from __future__ import annotations

from broker.targets.aws.kind import AWSKind, aws_error, role_name_of, session_policy
from broker.targets.aws.schema import AWS_TARGET_KEYS, KIND, POLICY_KEYS

__all__ = ["AWSKind", "AWS_TARGET_KEYS", "KIND", "POLICY_KEYS", "aws_error", "role_name_of",
           "session_policy"]
