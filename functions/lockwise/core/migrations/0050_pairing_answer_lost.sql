-- A lock whose pairing answer was lost (its Wi-Fi dropped as the answer came back, a 503 before a COMMIT's answer was
-- looked up) sent the same code again and was refused (401 invalid_provisioning_code): it could not pair until the
-- owner issued a new code, while the app showed it paired (attack run 37). A pairing sent again with the same code,
-- signing key and TLS key, while the code would still be valid and the credential it made is live, is now answered
-- with that credential and a certificate for it. The TLS key is matched by the SHA-256 of the CSR's public key (DER
-- SubjectPublicKeyInfo), kept from the pairing: only the lock that holds that key can use a certificate for it.
-- Nullable, no default: adding it rewrites nothing; credentials paired before it are never repeated.
ALTER TABLE lock_credentials ADD COLUMN csr_key_sha256 bytea CHECK (csr_key_sha256 IS NULL OR length(csr_key_sha256) = 32);
