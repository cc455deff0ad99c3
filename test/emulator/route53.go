package emulator

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Route 53 applies a change batch atomically and only if every change in it applies to
// the records as they are: a DELETE must give a record exactly as it is (name, type,
// TTL and every value), a CREATE must not find the record there. Otherwise the whole
// batch is rejected with InvalidChangeBatch ("Tried to delete resource record set
// [...] but the values provided do not match the current values", "... but it was not
// found", "Tried to create resource record set [...] but it already exists"). moto
// checks a DELETE against every record it ever wrote rather than the current one, so
// the proxy checks a batch itself, against moto's records read just before, and
// serialises the batches of the emulator, so that check and change are one step, as in
// Route 53. Simple records only: a change of a weighted, latency or alias record set
// (SetIdentifier, AliasTarget) is passed to moto unchecked. moto itself rejects a
// CREATE that was made once before whenever the record exists before the batch, even
// when the batch deletes it first: a batch the proxy has checked goes to moto with its
// CREATEs written as UPSERTs, which have the same effect on a record that is not there.

// rrSet is a record set as the Route 53 XML API writes it.
type rrSet struct {
	Name            string    `xml:"Name"`
	Type            string    `xml:"Type"`
	SetIdentifier   string    `xml:"SetIdentifier"`
	TTL             *int64    `xml:"TTL"`
	AliasTarget     *struct{} `xml:"AliasTarget"`
	ResourceRecords []string  `xml:"ResourceRecords>ResourceRecord>Value"`
}

func (r rrSet) key() string { return normalName(r.Name) + "/" + strings.ToUpper(r.Type) }

// same reports whether two simple record sets are equal as Route 53 compares them for a
// DELETE: TTL and the set of values.
func (r rrSet) same(o rrSet) bool {
	if (r.TTL == nil) != (o.TTL == nil) || r.TTL != nil && *r.TTL != *o.TTL {
		return false
	}
	a, b := slices.Clone(r.ResourceRecords), slices.Clone(o.ResourceRecords)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func normalName(n string) string { return strings.ToLower(strings.TrimSuffix(n, ".")) + "." }

type changeBatchRequest struct {
	Changes []struct {
		Action string `xml:"Action"`
		Set    rrSet  `xml:"ResourceRecordSet"`
	} `xml:"ChangeBatch>Changes>Change"`
}

type listRRSetsResponse struct {
	Sets []rrSet `xml:"ResourceRecordSets>ResourceRecordSet"`
}

// route53Change answers a ChangeResourceRecordSets call: the batch goes to moto (next)
// only if it applies to moto's records as they are now.
func (e *Emulator) route53Change(w http.ResponseWriter, r *http.Request, c call, body []byte, next http.HandlerFunc) {
	var req changeBatchRequest
	if err := xml.Unmarshal(body, &req); err != nil {
		next(w, r) // not ours to judge: moto answers
		return
	}
	for _, ch := range req.Changes {
		if ch.Set.SetIdentifier != "" || ch.Set.AliasTarget != nil {
			next(w, r)
			return
		}
	}
	zone := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/2013-04-01/hostedzone/"), "/"), "/rrset")

	e.route53Mu.Lock()
	defer e.route53Mu.Unlock()
	view := map[string]*rrSet{}
	for _, ch := range req.Changes {
		k := ch.Set.key()
		if _, ok := view[k]; ok {
			continue
		}
		cur, err := e.motoRecordSet(zone, ch.Set, r.Header.Get("Authorization"))
		if err != nil {
			http.Error(w, "emulator: reading the zone's records: "+err.Error(), http.StatusInternalServerError)
			return
		}
		view[k] = cur
	}
	for _, ch := range req.Changes {
		k, set := ch.Set.key(), ch.Set
		what := fmt.Sprintf("[name='%s', type='%s']", normalName(set.Name), strings.ToUpper(set.Type))
		switch strings.ToUpper(ch.Action) {
		case "CREATE":
			if view[k] != nil {
				e.writeAPIError(w, c, http.StatusBadRequest, "InvalidChangeBatch",
					"[Tried to create resource record set "+what+" but it already exists]")
				return
			}
			view[k] = &set
		case "DELETE":
			switch cur := view[k]; {
			case cur == nil:
				e.writeAPIError(w, c, http.StatusBadRequest, "InvalidChangeBatch",
					"[Tried to delete resource record set "+what+" but it was not found]")
				return
			case !cur.same(set):
				e.writeAPIError(w, c, http.StatusBadRequest, "InvalidChangeBatch",
					"[Tried to delete resource record set "+what+" but the values provided do not match the current values]")
				return
			}
			view[k] = nil
		case "UPSERT":
			view[k] = &set
		}
	}
	body = bytes.ReplaceAll(body, []byte("<Action>CREATE</Action>"), []byte("<Action>UPSERT</Action>"))
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	next(w, r)
}

// motoRecordSet returns the record set of set's name and type in zone as moto has it
// now, or nil. auth is the change's Authorization header: moto tells the service of a
// request by its credential scope (it checks no signature).
func (e *Emulator) motoRecordSet(zone string, set rrSet, auth string) (*rrSet, error) {
	q := url.Values{"name": {normalName(set.Name)}, "type": {strings.ToUpper(set.Type)}, "maxitems": {"1"}}
	req, err := http.NewRequest(http.MethodGet, e.MotoURL+"/2013-04-01/hostedzone/"+url.PathEscape(zone)+"/rrset?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	resp, err := e.transport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("moto answered %d: %s", resp.StatusCode, body)
	}
	var out listRRSetsResponse
	if err := xml.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("moto's record listing: %w", err)
	}
	for _, s := range out.Sets {
		if s.key() == set.key() && s.SetIdentifier == "" {
			return &s, nil
		}
	}
	return nil, nil
}
