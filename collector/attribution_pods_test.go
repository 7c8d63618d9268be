package collector

import (
	"testing"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// TestAttributionDropsDeletedPodsAtScrapeTime: a pod deleted after the
// pass loses its series at the next scrape, without waiting for the next
// pass; the other pods' and the services' series stay.
func TestAttributionDropsDeletedPodsAtScrapeTime(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "attr-del")
	fillFlows(t, ns, attributionFlows)
	ix := attributionIndex()
	a := newNetnsAttribution(t, ns, ix, 0)
	mustPass(t, a)
	before := gather(t, a)
	clientB := `netinspect_conntrack_pod_entries{namespace="default",pod="client-b",protocol="tcp"}`
	if before[clientB] != 230 {
		t.Fatalf("%s = %v before the delete, want 230", clientB, before[clientB])
	}
	ix.DeletePod("default", "client-b")
	after := gather(t, a)
	for k, v := range before {
		_, still := after[k]
		switch {
		case k == clientB || k == `netinspect_conntrack_pod_entries{namespace="default",pod="client-b",protocol="udp"}`:
			if still {
				t.Errorf("%s still served after the pod was deleted", k)
			}
		case k == "netinspect_scrape_collector_duration_seconds{collector=\"under_test\"}" || k == "netinspect_snapshot_age_seconds{collector=\"conntrack-attribution\"}":
		case !still || after[k] != v:
			t.Errorf("%s = %v before the delete, %v (present %v) after", k, v, after[k], still)
		}
	}
}
