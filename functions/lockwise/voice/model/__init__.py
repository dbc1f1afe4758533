"""Speaker models: turning a recording into a speaker embedding (GE2E, ECAPA-TDNN through SpeechBrain or its ONNX
export), the score cohort, resampling, audio fingerprints and model-file checks."""
