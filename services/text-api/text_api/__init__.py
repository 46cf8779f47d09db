"""text-api: Chinese review sentiment over HTTP, answered by the `lstm` model
(text_api.sentiment.SentimentService; its requests and replies in text_api.schemas)."""
