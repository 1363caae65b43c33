"""What an index serves besides a search box, one module per use, over the SQL functions of
sql/uses.sql: passages for RAG (passages), rows like a row (similar), near-duplicates (duplicates),
labels from neighbours or a trained classifier (classify), anomalies (outliers) and groups (clusters).
SearchIndex exposes each as a method; rows holds what they share."""
