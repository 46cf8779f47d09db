#!/bin/sh
# As the official image's entry point: serve $MODEL_BASE_PATH/$MODEL_NAME; extra flags pass through.
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
    --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
