"""Client for the model APIs: `ModelApiClient(url).sentiment("很好")`, `.saliency(image_bytes)`."""

from model_api_client.client import ApiError, ModelApiClient, SaliencyMask, Sentiment

__all__ = ["ApiError", "ModelApiClient", "SaliencyMask", "Sentiment"]
