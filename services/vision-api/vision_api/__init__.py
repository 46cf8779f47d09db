"""vision-api: salient-object masks over HTTP, answered by the `cv_sod` model
(vision_api.saliency.SaliencyService; its requests and replies in vision_api.schemas).

Nothing is imported here: the decoding child process (vision_api.decode_process) is in this
package and must not load Flask or gRPC.
"""
