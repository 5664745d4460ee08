package protocol

import "strings"

// SplitTLS splits link-tls's info, "TLSv1.3:TLS_AES_256_GCM_SHA384:256",
// into the TLS version, the cipher and its strength in bits, the three
// values milters know as {tls_version}, {cipher} and {cipher_bits}.
//
// smtpd writes "%s:%s:%d". OpenSSL cipher names use '-' and '_', never ':',
// but the split is made at the first ':' and the last one so that a
// cipher name with a ':' would still come out whole. ok is false when
// info has fewer than three parts.
func SplitTLS(info string) (version, cipher, bits string, ok bool) {
	i := strings.IndexByte(info, ':')
	j := strings.LastIndexByte(info, ':')
	if i < 0 || j == i {
		return "", "", "", false
	}
	return info[:i], info[i+1 : j], info[j+1:], true
}
