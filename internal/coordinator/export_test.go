package coordinator

// SetUploadCaps sets the caps on an account's uploaded logs for a test
// and returns what puts them back.
func SetUploadCaps(count int, bytes int64) (restore func()) {
	oldCount, oldBytes := maxUploadedLogs, maxUploadedLogBytes
	maxUploadedLogs, maxUploadedLogBytes = count, bytes
	return func() { maxUploadedLogs, maxUploadedLogBytes = oldCount, oldBytes }
}
