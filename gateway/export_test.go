package gateway

// VerdictWord is verdictWord, for TestVerdictWordIsMetrics, which lives
// outside the package because metrics imports gateway.
var VerdictWord = verdictWord
