"""The DynamoDB index: pynamodb models (one table) and the transactional writer."""
