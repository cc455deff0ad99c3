package harness

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"strconv"
)

// moto 5.2.5 does not implement DescribeInstanceRefreshes: it answers HTTP 500 with a
// body the SDK cannot parse. The proxy answers it instead, as AWS answers for a group
// that has never been refreshed: an empty list. A test that needs a group with
// refreshes rewrites that answer with a recorded AWS one through Override, which
// applies on top of this answer exactly as it does on top of moto's.
const actionDescribeInstanceRefreshes = "DescribeInstanceRefreshes"

// unimplemented answers the calls moto does not implement and passes every other call
// to next (moto).
type unimplemented struct {
	h    *Harness
	next http.Handler
}

func (u unimplemented) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "harness: reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	c := identify(r, body)
	if c.protocol != protocolQuery || c.action != actionDescribeInstanceRefreshes {
		u.next.ServeHTTP(w, r)
		return
	}
	type result struct {
		InstanceRefreshes struct{} `xml:"InstanceRefreshes"`
	}
	resp := struct {
		XMLName   xml.Name `xml:"DescribeInstanceRefreshesResponse"`
		Xmlns     string   `xml:"xmlns,attr"`
		Result    result   `xml:"DescribeInstanceRefreshesResult"`
		RequestID string   `xml:"ResponseMetadata>RequestId"`
	}{Xmlns: autoscalingNS, RequestID: u.h.newRequestID()}
	out := marshalXML(resp)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-RequestId", resp.RequestID)
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}
