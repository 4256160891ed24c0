"""Pre token generation trigger (V2): the access token's dicomweb scopes come from the user's groups."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from dicomweb_core.group_scopes import customise, parse_group_scopes
from dicomweb_core.observability import logger

MAPPING = parse_group_scopes(os.environ["GROUP_SCOPES"])


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return customise(event, MAPPING)
