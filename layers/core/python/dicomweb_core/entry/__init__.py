"""Lambda entry kits: every API function and every SQS hook is built the same way."""
